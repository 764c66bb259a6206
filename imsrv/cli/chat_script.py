"""The scripted modes of `imsrv chat`: ``--send`` / ``--send-group`` (send, print the
ack, exit) and ``--listen`` / ``--json`` (print incoming events until told to stop)."""
import json
import signal
import sys
import time

from .chat_text import Narrator


def print_error(msg):
    print(f"imsrv chat: {msg}", file=sys.stderr, flush=True)


def resolve_group(client, name):
    """A group id from an id or a name (None if it names none, or several)."""
    groups = client.groups()
    for group in groups:
        if group["group"] == name:
            return name
    named = [group["group"] for group in groups if group.get("name") == name]
    return named[0] if len(named) == 1 else None


def send_and_print(client, args, text, to=None, group=None):
    """--send / --send-group: send one text, print the ack (a JSON line with --json).
    -> the exit status."""
    from ..client import MessageTooLarge, ServerError
    try:
        ack = client.send(to, {"text": text}, group=group, timeout=args.connect_timeout)
    except ServerError as exc:
        print_error(f"send to {to or '#' + group} refused: {exc.code}: {exc.message}")
        return 1
    except MessageTooLarge as exc:
        print_error(f"not sent to {to or '#' + group}: {exc}")
        return 1
    if args.json:
        out = {"event": "ack"}
        out.update(ack)
        out["to" if to else "group"] = to or group
        print(json.dumps(out, ensure_ascii=False), flush=True)
    else:
        print(f"sent to {to or '#' + group}: mid={ack['mid']} seq={ack['seq']}", flush=True)
    return 0


def listen(client, args):
    """--listen / --json: print events as they come until --count messages, --timeout
    seconds, SIGINT/SIGTERM, or the client stops.  -> the exit status."""
    import gevent
    from gevent.event import Event as GEvent
    types = None if args.events == "all" else [t.strip() for t in args.events.split(",") if t.strip()]
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    stop = GEvent()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            gevent.signal_handler(sig, stop.set)
        except Exception:
            pass
    printed = 0
    narrator = Narrator(client.user)
    while True:
        tick = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
        for event in client.events(types, timeout=tick):
            if args.json:
                print(json.dumps(event.as_dict(), ensure_ascii=False), flush=True)
            else:
                line = narrator.line(event)
                if line is not None:
                    print(line, flush=True)
            if event.type == "message":
                printed += 1
                if args.count is not None and printed >= args.count:
                    return 0
            if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                return 0
        if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
            return 0
        if client.stopped:
            print_error(f"stopped: {client.stop_error()}")
            return 1
