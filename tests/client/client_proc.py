"""A small SDK client run as a separate process by the tests (so it can be SIGKILLed).

    client_proc.py --api A --user U --password P --store FILE [--device D]
                   [--peer PEER --send N [--prefix X] [--die-after-queue]]
                   [--recv]

Prints JSON lines on stdout (flushed): {"event": "online", "cursor", "pending"} after login;
{"event": "message", "seq", "from", "body"} per received message with --recv;
{"event": "outbox_empty"} once every send (queued now or left by a previous run) is acked.
--die-after-queue: SIGKILL itself right after queueing the sends (before any ack is read).
"""
import argparse
import json
import os
import signal
import sys

import gevent

from imsrv.client import Client


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--api", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--device", default="proc")
    p.add_argument("--peer")
    p.add_argument("--send", type=int, default=0)
    p.add_argument("--prefix", default="p")
    p.add_argument("--die-after-queue", action="store_true")
    p.add_argument("--recv", action="store_true")
    args = p.parse_args()

    client = Client(args.api, device=args.device, store=args.store, timeout=5,
                    backoff_base=0.05, backoff_max=0.5)
    client.login(args.user, args.password)
    out({"event": "online", "cursor": client.cursor, "pending": len(client.pending_sends())})
    for i in range(args.send):
        client.send(args.peer, {"text": f"{args.prefix}{i}"}, wait=False)
    if args.die_after_queue:
        os.kill(os.getpid(), signal.SIGKILL)

    def wait_outbox():
        while client.pending_sends():
            gevent.sleep(0.01)  # poll interval: the SDK has no "outbox empty" event
        out({"event": "outbox_empty"})

    waiter = gevent.spawn(wait_outbox)
    if args.recv:
        for msg in client.messages():
            out({"event": "message", "seq": msg["seq"], "from": msg["from"], "body": msg["body"]})
    waiter.join()
    client.close()


if __name__ == "__main__":
    main()
