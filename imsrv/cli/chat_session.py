"""The interactive session of `imsrv chat`: what a person at the terminal sees and does.

:class:`Interactive` shows events as they come (held back while a command prints its
own lines, so the screen reads the same every time), reads lines through the
:class:`~.chat_editor.LineEditor`, runs slash commands from the table in
:mod:`.chat_commands` (and :mod:`.chat_commands_v11`), sends plain lines to the open
conversation (with the @mentions of a group message), and keeps that conversation: its
prompt, history scrollback, read receipts, typing hints.  At start it lists the
conversations with their unread counts (nothing when there are none).
"""
import os
import signal
import sys
import time

from . import chat_commands
from .chat_editor import LineEditor, Screen
from .chat_entries import conversation_lines, entry_line, find_mentions, group_event_line
from .chat_groups import GroupTracker
from .chat_text import Narrator, conv_label, error_text, hhmm

START_CONVERSATIONS = 10   # conversations listed at start (/convs for more)

TYPING_EVERY = 3.0      # seconds between typing hints while typing


class Interactive:
    """The interactive session: reads lines (or prompts) from the terminal, shows events
    as they come, runs the slash commands of :mod:`.chat_commands`."""

    def __init__(self, client, stdin=None, stdout=None, group_poll=30.0):
        self.client = client
        self.me = client.user
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.fd = self.stdin.fileno()
        self.tty = os.isatty(self.fd)
        self.screen = Screen(self.stdout, self.tty)
        self.editor = LineEditor(self.fd, self.tty, self.screen, quitting=lambda: self.quit,
                                 on_quit=self._request_quit, on_typed=self._typing_hint)
        self.groups = GroupTracker(client, self.show, poll=group_poll)
        self.narrator = Narrator(self.me, self.groups.names)
        self.conv = None            # ("user", name) or ("group", gid)
        self.oldest_mid = {}        # conv -> oldest mid shown by /history
        self.last_typing_sent = 0.0
        self.quit = False
        self.leaving = False        # the account is being deleted: the kick that follows is expected
        self.rc = 0
        self.pending = []           # SendHandles of sends not acked yet (waited for at the end)
        self._held = None           # event lines waiting for the running command's output

    # ------------------------------------------------------------------ output
    def say(self, text):
        self.screen.line(text)

    def show(self, text):
        """A line about something that happened (an event, a group notice): while a
        command runs it waits until the command's own lines are out, so the screen
        reads in the same order every time."""
        if self._held is not None:
            self._held.append(text)
        else:
            self.say(text)

    def _release(self):
        held, self._held = self._held, None
        for text in held or ():
            self.say(text)

    def set_prompt(self):
        if self.conv is None:
            self.screen.prompt = f"{self.me}> "
        elif self.conv[0] == "user":
            self.screen.prompt = f"{self.me}@{self.conv[1]}> "
        else:
            self.screen.prompt = f"{self.me}#{self.groups.names.get(self.conv[1], self.conv[1])}> "
        self.screen.redraw()

    def on_event(self, event):
        import gevent
        if event.type == "message":
            msg = event.data
            self.groups.before_message(msg)
            if msg.get("kind") == "group_event":
                line = self.groups.event_line(msg)
            else:
                line = entry_line(msg, self.me, self.groups.label_names(), self.lookup)
            if line is not None:
                self.show(line)
            self.groups.after_message(msg)
            if msg.get("from") != self.me and not msg.get("kind") and self._in_conv(msg):
                gevent.spawn(self._mark_read, msg)
            return
        if self.leaving and event.type in ("kicked", "state"):
            return
        line = self.narrator.line(event)
        if line is not None:
            self.show(line)
        if event.type == "kicked" or (event.type == "state" and event["state"] in ("auth_failed", "failed")):
            self.rc = 1
            self.quit = True   # the input loop notices within half a second

    def _in_conv(self, msg):
        if self.conv is None:
            return False
        if msg.get("group") is not None:
            return self.conv == ("group", msg["group"])
        return self.conv == ("user", msg.get("from"))

    def lookup(self, mid):
        """The kept message ``mid`` (to quote what a reply or a reaction is about)."""
        from ..client import ClientError
        try:
            return self.client.local_message(mid)
        except ClientError:
            return None

    def _mark_read(self, msg):
        from ..client import ClientError
        try:
            self.client.read(msg)
        except ClientError:
            pass

    # ------------------------------------------------------------------ main loop
    def run(self):
        import gevent
        saved_mode = None
        if self.tty:
            # before the first line is shown: TCSANOW keeps what was typed already
            import termios
            import tty
            saved_mode = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd, termios.TCSANOW)
        try:
            gevent.signal_handler(signal.SIGINT, self._request_quit)
        except Exception:
            pass
        try:
            self.groups.start()
            self.say(f"* logged in as {self.me}; /help for commands")
            self.show_conversations(START_CONVERSATIONS, start=True)
            self.set_prompt()
            self.client.on("*", self.on_event)
            while not self.quit:
                line = self.read_line()
                if line is None:
                    break
                self.handle_line(line)
        finally:
            self.groups.stop()
            if saved_mode is not None:
                import termios
                termios.tcsetattr(self.fd, termios.TCSADRAIN, saved_mode)
                self.stdout.write("\n")
                self.stdout.flush()
        self._finish_sends()
        return self.rc

    def _request_quit(self):
        """SIGINT, Ctrl-C, Ctrl-D: the input loop ends."""
        self.quit = True

    def _finish_sends(self):
        for handle in self.pending:
            try:
                handle.get(timeout=5)
            except Exception:
                pass

    # ------------------------------------------------------------------ input
    def read_line(self, secret=False):
        """The next line typed (None at the end of input or on quit); see LineEditor."""
        return self.editor.read_line(secret)

    def ask(self, prompt, secret=False):
        """Ask a question on the prompt line -> the answer ("" if none)."""
        self._release()             # what happened so far shows before the question
        saved = self.screen.prompt
        self.screen.prompt = prompt
        self.screen.secret = secret
        self.screen.redraw()
        try:
            answer = self.read_line(secret=secret)
            self._held = []
        finally:
            self.screen.prompt = saved
            self.screen.secret = False
            self.screen.redraw()
        return answer or ""

    def ask_secret(self, prompt):
        return self.ask(prompt, secret=True)

    def _typing_hint(self):
        if self.conv is None or self.conv[0] != "user" or self.screen.buf.startswith("/"):
            return
        now = time.monotonic()
        if now - self.last_typing_sent >= TYPING_EVERY:
            self.last_typing_sent = now
            self.client.typing(self.conv[1])

    # ------------------------------------------------------------------ commands
    def handle_line(self, line):
        from ..client import ClientError
        line = line.strip()
        if not line:
            return
        self._held = []
        try:
            if line.startswith("/"):
                chat_commands.run(self, line)
            else:
                self.send_text(line)
        except (ClientError, ValueError) as exc:
            self.say(error_text(exc))
        finally:
            self._release()

    def send_text(self, text, conv=None, reply_to=None):
        """Send ``text`` to ``conv`` (default: the open one); in a group, its @name words
        of members become mentions (``@all``: everyone)."""
        conv = conv or self.conv
        if conv is None:
            self.say("! no conversation open: /open USER or /group GROUP (or /msg USER TEXT)")
            return
        kind, key = conv
        mentions = None
        if kind == "group" and "@" in text:
            if key not in self.groups.members:
                self.groups.refresh_members(key)
            mentions = find_mentions(text, self.groups.members.get(key, set()))
        self.queue(lambda: self.client.send(key if kind == "user" else None, {"text": text},
                                            group=key if kind == "group" else None, reply_to=reply_to,
                                            mentions=mentions, wait=False))
        self.last_typing_sent = 0.0

    def queue(self, request, what="the message"):
        """Run an outbox request (``request()`` -> a SendHandle): its result shows up as
        an inbox entry, a refusal as a send_failed line; the handle is waited for at exit."""
        queued = not self.client.online
        handle = request()
        if queued:
            self.say(f"* offline: {what} is queued and sent when the connection is back")
        self.pending = [pending for pending in self.pending if not pending.ready()] + [handle]

    def group_open(self):
        if self.conv is None or self.conv[0] != "group":
            raise ValueError("open a group first: /group GROUP")
        return self.conv[1]

    def conv_open(self):
        if self.conv is None:
            raise ValueError("no conversation open: /open USER or /group GROUP")
        return self.conv

    def show_conversations(self, limit, start=False):
        """The conversation list with unread counts; at start nothing when there is none
        (or the server does not know the op)."""
        from ..client import ClientError
        try:
            convs = self.client.conversations(limit=limit)
        except ClientError:
            if start:
                return
            raise
        if not convs:
            if not start:
                self.say("* no conversations yet")
            return
        self.say("* your conversations, most recent first:" if not start else
                 "* your conversations (/convs for more, /open or /group to read one):")
        for line in conversation_lines(convs, self.me, self.groups.label_names(), self.lookup):
            self.say(line)

    def still_open(self):
        """What stays open after a failed /open or /group (for its message)."""
        if self.conv is None:
            return "no conversation is open"
        kind, key = self.conv
        label = "@" + key if kind == "user" else "#" + self.groups.names.get(key, key)
        return f"plain lines still go to {label}"

    def open(self, conv):
        self.conv = conv
        self.oldest_mid.pop(conv, None)
        label = "@" + conv[1] if conv[0] == "user" else "#" + self.groups.names.get(conv[1], conv[1])
        self.say(f"* conversation {label} (plain lines are sent there; /history for more)")
        self.history(10, quiet_empty=True)
        self.set_prompt()

    def history_line(self, msg):
        """A history or search item (a message in its current state, or a group event)."""
        names = self.groups.label_names()
        if msg.get("kind") == "group_event":
            line = group_event_line(msg, names, self.me, live=False)
            return f"{hhmm(msg.get('ts'))} [{conv_label(msg, self.me, names)}] {line[2:]}"
        return entry_line(msg, self.me, names, self.lookup)

    def history(self, count, quiet_empty=False):
        if self.conv is None:
            raise ValueError("no conversation open")
        kind, key = self.conv
        before = self.oldest_mid.get(self.conv)
        msgs = self.client.history(user=key if kind == "user" else None,
                                   group=key if kind == "group" else None, before=before, limit=max(1, min(count, 200)))
        if not msgs:
            if not quiet_empty:
                self.say("* no earlier messages")
            return
        self.oldest_mid[self.conv] = msgs[-1]["mid"]
        for msg in reversed(msgs):
            self.say("  " + self.history_line(msg))
        newest = msgs[0]
        if newest.get("from") != self.me and newest.get("seq"):
            import gevent
            gevent.spawn(self._mark_read, newest)
