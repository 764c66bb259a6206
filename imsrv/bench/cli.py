"""The ``imsrv bench SCENARIO`` command line (imsrv/cli/main.py delegates here).

    imsrv bench pairs [--pairs 50] [--messages 4000] [--batch 10] [--window 1000] [--size 120]
                      [--rounds 1] [--peer mosquitto|ejabberd]
    imsrv bench group [--members 10,100,500] [--messages 200] [--senders 1] [--window 1]
    imsrv bench idle  [--connections 10000] [--hold 10] [--heartbeat 30]
    imsrv bench storm [--connections 2000] [--messages 1]

Every scenario also takes the deployment (``--embedded``, the default; ``--distributed``;
``--api HOST:PORT``, see imsrv/bench/deploy.py), ``--workers N`` (load-generator
processes), ``--json FILE`` and ``--timeout S``.  A progress line goes to stderr once a
second; the tables (markdown, with command, machine, date and commit) go to stdout.
The exit status is 0 when every send was acked and delivered (every connection held,
every client back), 1 otherwise, 2 when the run could not be done at all.
"""
import argparse
import importlib
import shlex
import signal
import sys

#: what ``imsrv bench --help`` says: the module docstring without its first paragraph
DESCRIPTION = "Load-generate against an imsrv deployment and report the numbers.\n\n" + __doc__.split("\n\n", 1)[1]


def _sizes(text):
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 2:
        raise argparse.ArgumentTypeError("every group needs at least 2 members")
    return sizes


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _common(parser, workers, timeout):
    from .deploy import add_arguments
    add_arguments(parser)
    parser.add_argument("--workers", type=_positive(int), default=workers,
                        help="load-generator worker processes (default "
                             + (f"{workers})" if workers else "one per 5,000 connections, at least 2)"))
    parser.add_argument("--json", metavar="FILE", help="also write every number as JSON to FILE (- = stdout)")
    parser.add_argument("--timeout", type=_positive(float), default=timeout, metavar="S",
                        help=f"give up on the measured phase after S seconds (default {timeout:g}; setup "
                             "has a bound of its own)")


def add_parser(sub):
    """Add ``bench`` and its scenarios to the ``imsrv`` subparsers ``sub``."""
    bench = sub.add_parser("bench", help="load-generate against a deployment and report the numbers",
                           description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    scenarios = bench.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")

    pairs = scenarios.add_parser("pairs", help="sender/recipient pairs: acked/s, delivered/s, latency",
                                 description="N sender/recipient pairs, each sender sending M messages with "
                                             "up to W unacked (imsrv/bench/pairs.py).")
    pairs.add_argument("--pairs", type=_positive(int), default=50, help="sender/recipient pairs (default 50)")
    pairs.add_argument("--messages", type=_positive(int), default=4000, help="messages per sender (default 4000)")
    pairs.add_argument("--batch", type=_positive(int), default=10, help="sends per socket write (default 10)")
    pairs.add_argument("--window", type=_positive(int), default=1000,
                       help="unacked sends per sender at most (default 1000)")
    pairs.add_argument("--size", type=int, default=120, help="body text length in characters (default 120)")
    pairs.add_argument("--rounds", type=_positive(int), default=1,
                       help="rounds (with --peer: of each, alternating; default 1)")
    pairs.add_argument("--peer", choices=("mosquitto", "ejabberd"),
                       help="also run the same shape against this server (imsrv/bench/peer_NAME.py) and print "
                            "the ratio imsrv/peer of delivered/s")
    _common(pairs, workers=2, timeout=300.0)

    group = scenarios.add_parser("group", help="fan-out to the members of a group: deliveries/s, latency to "
                                               "the last member", description="One group per size, every member "
                                 "online; senders send to the group (imsrv/bench/group.py).")
    group.add_argument("--members", type=_sizes, default=[10, 100, 500],
                       help="group sizes, comma-separated (default 10,100,500)")
    group.add_argument("--messages", type=_positive(int), default=200, help="messages per sender (default 200)")
    group.add_argument("--senders", type=_positive(int), default=1, help="members that send (default 1)")
    group.add_argument("--window", type=_positive(int), default=1,
                       help="unacked sends per sender at most (default 1: latency of one message at a time)")
    group.add_argument("--size", type=int, default=120, help="body text length in characters (default 120)")
    _common(group, workers=2, timeout=300.0)

    idle = scenarios.add_parser("idle", help="held authenticated connections: server RSS per connection, "
                                             "connect + auth rate", description="C authenticated connections "
                                "held with heartbeats (imsrv/bench/idle.py).")
    idle.add_argument("--connections", type=_positive(int), default=10000,
                      help="connections to hold (default 10000)")
    idle.add_argument("--hold", type=float, default=10.0, help="seconds to hold them (default 10)")
    idle.add_argument("--heartbeat", type=_positive(float), default=30.0,
                      help="seconds between two pings of a connection (default 30, inside the 90 s idle_timeout)")
    idle.add_argument("--concurrency", type=_positive(int), default=100,
                      help="connects + auths in flight per worker (default 100)")
    _common(idle, workers=None, timeout=600.0)

    storm = scenarios.add_parser("storm", help="every client reconnecting at once after a gateway restart",
                                 description="C clients connected and synced; the gateways are restarted; "
                                 "time until all are back and synced (imsrv/bench/storm.py).")
    storm.add_argument("--connections", type=_positive(int), default=2000, help="clients (default 2000)")
    storm.add_argument("--messages", type=int, default=1,
                       help="notify messages sent to every client while it is away, to sync (default 1; "
                            "needs the admin key, which the bench's own deployments have)")
    storm.add_argument("--concurrency", type=_positive(int), default=100,
                       help="connects + auths in flight per worker during setup (default 100)")
    _common(storm, workers=None, timeout=300.0)
    bench.set_defaults(fn=run)
    return bench


def _interrupted(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(args):
    """Start the deployment, run the scenario, stop everything -> exit status."""
    from . import deploy, report
    from .client import BenchError
    from .workers import WorkerFailed
    module = importlib.import_module(f"imsrv.bench.{args.scenario}")
    command = "imsrv bench " + " ".join(shlex.quote(arg) for arg in sys.argv[sys.argv.index("bench") + 1:]) \
        if "bench" in sys.argv else f"imsrv bench {args.scenario}"
    info = report.header(command)
    say = report.Progress(args.scenario).say
    for signum in (signal.SIGINT, signal.SIGTERM):   # both end the run through the cleanup below,
        signal.signal(signum, _interrupted)          # also when started in the background (SIGINT ignored)
    try:
        with deploy.open_deployment(args, say=say) as deployment:
            return module.main(args, deployment, info)
    except (BenchError, deploy.DeployError, WorkerFailed, OSError) as exc:
        print(f"\nimsrv bench {args.scenario}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nimsrv bench {args.scenario}: interrupted; everything it started is stopped and removed",
              file=sys.stderr)
        return 130
