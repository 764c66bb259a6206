"""The terminal line editor of `imsrv chat`: the line being typed stays at the bottom of
the screen while event lines scroll above it.

:class:`Screen` writes lines above the prompt line and redraws the prompt with what has
been typed so far (a password is not shown).  :class:`LineEditor` reads the keyboard
(cbreak mode: one character at a time) and edits the line: the keys it knows are one
table, :data:`KEYS`.  When stdin is not a terminal it just reads lines.
"""
import codecs
import os

#: how long one wait for input lasts before the editor looks whether the session ends
READ_POLL = 0.5


class Screen:
    """Output that keeps the line being typed at the bottom (on a terminal)."""

    def __init__(self, out, tty):
        self.out = out
        self.tty = tty
        self.prompt = "> "
        self.buf = ""
        self.secret = False     # a password is being typed: the line is not shown

    def _typed(self):
        return "" if self.secret else self.buf

    def line(self, text):
        if self.tty:
            self.out.write("\r\x1b[K" + text + "\n" + self.prompt + self._typed())
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def enter(self):
        """Enter: what was typed stays on the screen after its prompt (a password does
        not), and a fresh prompt line starts below."""
        if self.tty:
            self.out.write("\r\x1b[K" + self.prompt + self._typed() + "\n")
        self.buf = ""
        self.redraw()

    def redraw(self):
        if self.tty:
            self.out.write("\r\x1b[K" + self.prompt + self._typed())
            self.out.flush()


#: a key handler's answer when the line is not finished
MORE = object()

#: control keys -> the LineEditor method that handles them; other keys from " " up are
#: typed into the line, the rest are ignored
KEYS = {
    "\x1b": "escape",        # the start of an escape sequence (arrow keys, ...): skipped
    "\r": "enter",
    "\n": "enter",
    "\x7f": "backspace",
    "\x08": "backspace",
    "\x15": "kill_line",     # Ctrl-U
    "\x04": "end_of_input",  # Ctrl-D
    "\x03": "interrupt",     # Ctrl-C
}


class LineEditor:
    """Reads lines typed on ``fd`` and shows them on ``screen``.

    ``quitting()``: True once the session ends (read_line then returns None).
    ``on_quit()``: Ctrl-C, or Ctrl-D on an empty line, asks the session to end.
    ``on_typed()``: a character was typed into a visible line (typing hints)."""

    def __init__(self, fd, tty, screen, quitting, on_quit, on_typed):
        self.fd = fd
        self.tty = tty
        self.screen = screen
        self.quitting = quitting
        self.on_quit = on_quit
        self.on_typed = on_typed
        self._chars = ""            # typed but not consumed yet (after an Enter in the same read)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._in_escape = False

    def read_line(self, secret=False):
        """The next line typed (None at the end of input or on quit).  ``secret``: what
        is typed is not shown (and sends no typing hints)."""
        while not self.quitting():
            line = self._take_line(secret)
            if line is not None:
                return line
            data = self._read_chunk()
            if not data:
                rest, self._chars = self._chars, ""
                if not self.tty and rest.strip():
                    return rest
                return None
            self._chars += self._decoder.decode(data)
        return None

    def _read_chunk(self):
        from gevent.socket import wait_read
        while not self.quitting():
            try:
                wait_read(self.fd, timeout=READ_POLL)
            except Exception:  # timeout: look whether the session ends
                continue
            try:
                return os.read(self.fd, 4096)
            except BlockingIOError:
                continue
            except OSError:
                return b""
        return None

    def _take_line(self, secret):
        """Consume typed characters up to an Enter -> the line, or None (need more)."""
        if not self.tty:
            if "\n" not in self._chars:
                return None
            line, self._chars = self._chars.split("\n", 1)
            return line.rstrip("\r")
        while self._chars:
            key, self._chars = self._chars[0], self._chars[1:]
            if self._in_escape:
                # skip an escape sequence: ESC [ ... final byte
                if key.isalpha() or key == "~":
                    self._in_escape = False
                continue
            handler = KEYS.get(key)
            if handler is not None:
                outcome = getattr(self, handler)()
                if outcome is not MORE:
                    return outcome
            elif key >= " ":
                self.type_char(key, secret)
        return None

    # ------------------------------------------------------------------ keys
    def escape(self):
        self._in_escape = True
        return MORE

    def enter(self):
        line = self.screen.buf
        self.screen.enter()
        return line

    def backspace(self):
        self.screen.buf = self.screen.buf[:-1]
        self.screen.redraw()
        return MORE

    def kill_line(self):
        self.screen.buf = ""
        self.screen.redraw()
        return MORE

    def end_of_input(self):
        if self.screen.buf:
            return MORE
        self.on_quit()
        return None

    def interrupt(self):
        self.on_quit()
        return None

    def type_char(self, char, secret):
        self.screen.buf += char
        if not secret:
            self.screen.out.write(char)
            self.screen.out.flush()
            self.on_typed()
