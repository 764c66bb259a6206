"""The ``imsrv bench SCENARIO`` command line (imsrv/cli/main.py delegates here).

    imsrv bench pairs [--pairs 50] [--messages 4000] [--batch 10] [--window 1000] [--size 120]
                      [--rounds 1] [--peer mosquitto|ejabberd] [--rate R] [--tls]
    imsrv bench sweep [--fractions 0.1,0.25,0.5,0.75,0.9] [--seconds 10] [--plot FILE.svg] [--both]
                      (and pairs' --pairs --messages --batch --window --size)
    imsrv bench group [--members 10,100,500] [--messages 200] [--senders 1] [--window 1]
    imsrv bench idle  [--connections 10000[,20000...]] [--devices 100] [--hold 10] [--heartbeat 30]
                      [--plot FILE.svg] [--both] [--tls]
    imsrv bench storm [--connections 2000] [--messages 1]

Every scenario also takes the deployment (``--embedded``, the default; ``--distributed``
with ``--gateways N``, default 2; ``--api HOST:PORT``, see imsrv/bench/deploy.py),
``--workers N`` (load-generator processes), ``--json FILE`` and ``--timeout S``.  A
progress line goes to stderr once a second; the tables (markdown, with command, machine,
date and commit) go to stdout.  ``sweep`` and ``idle`` start a fresh deployment per
measurement themselves (``--both``: the embedded one, then the distributed one).
``pairs`` and ``idle`` take ``--tls``: every connection over TLS; a deployment the bench
starts gets a self-signed certificate (``imsrv cert``'s code, in a temporary directory,
given to its processes as IMSRV_TLS_CERT / IMSRV_TLS_KEY) that the load generator
trusts; a running one (``--api``) is checked against the system's CAs or ``--ca-file``.
The exit status is 0 when every send was acked and delivered (every connection held,
every client back), 1 otherwise, 2 when the run could not be done at all.
"""
import argparse
import functools
import importlib
import os
import shlex
import shutil
import signal
import sys
import tempfile

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


def _counts(text):
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("expected one or more counts, each at least 1")
    return counts


def _fractions(text):
    try:
        fractions = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not fractions or not all(0 < fraction <= 1 for fraction in fractions):
        raise argparse.ArgumentTypeError("expected one or more fractions, each above 0 and at most 1")
    return fractions


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _common(parser, workers, timeout, per_worker=5000):
    from .deploy import add_arguments
    add_arguments(parser)
    parser.add_argument("--workers", type=_positive(int), default=workers,
                        help="load-generator worker processes (default "
                             + (f"{workers})" if workers else f"one per {per_worker:,} connections, at least 2)"))
    parser.add_argument("--json", metavar="FILE", help="also write every number as JSON to FILE (- = stdout)")
    parser.add_argument("--timeout", type=_positive(float), default=timeout, metavar="S",
                        help=f"give up on the measured phase after S seconds (default {timeout:g}; setup "
                             "has a bound of its own)")


def _tls_options(parser):
    parser.add_argument("--tls", action="store_true",
                        help="every connection over TLS (a deployment the bench starts gets a self-signed "
                             "certificate; a running one is checked against the system's CAs or --ca-file)")
    parser.add_argument("--ca-file", metavar="FILE",
                        help="with --api: trust the CA certificate(s) in FILE (implies --tls)")


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
    pairs.add_argument("--rate", type=_positive(float), metavar="R",
                       help="pace the senders to R sends/s in total (each sender on a schedule of its own, a batch "
                            "at a time; the window still applies); default: unpaced, as fast as acks allow")
    _tls_options(pairs)
    _common(pairs, workers=2, timeout=300.0)

    sweep = scenarios.add_parser("sweep", help="latency against throughput: pairs unpaced (the maximum), then "
                                               "paced at fractions of it", description="Runs `pairs` unpaced to "
                                 "find the maximum delivered/s, then with --rate at fractions of it, on one "
                                 "deployment (imsrv/bench/sweep.py); a table and, with --plot, an SVG of p50 and "
                                 "p99 latency against delivered/s.")
    sweep.add_argument("--fractions", type=_fractions, default=[0.1, 0.25, 0.5, 0.75, 0.9],
                       help="fractions of the maximum rate to offer, comma-separated (default 0.1,0.25,0.5,0.75,0.9)")
    sweep.add_argument("--pairs", type=_positive(int), default=50, help="sender/recipient pairs (default 50)")
    sweep.add_argument("--messages", type=_positive(int), default=4000,
                       help="messages per sender of the unpaced run (default 4000)")
    sweep.add_argument("--seconds", type=_positive(float), default=10.0,
                       help="seconds each paced point lasts (its messages per sender follow; default 10)")
    sweep.add_argument("--batch", type=_positive(int), default=10, help="sends per socket write (default 10)")
    sweep.add_argument("--window", type=_positive(int), default=1000,
                       help="unacked sends per sender at most (default 1000)")
    sweep.add_argument("--size", type=int, default=120, help="body text length in characters (default 120)")
    sweep.add_argument("--plot", metavar="FILE.svg", help="write the plot (needs matplotlib: imsrv[bench])")
    sweep.add_argument("--both", action="store_true",
                       help="sweep the embedded server, then the distributed set (each started fresh), one plot")
    _common(sweep, workers=2, timeout=300.0)

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
    idle.add_argument("--connections", type=_counts, default=[10000], metavar="C[,C...]",
                      help="connections to hold (default 10000); a list measures each on a fresh server")
    idle.add_argument("--devices", type=_positive(int), default=100,
                      help="connections (devices) per user (default 100: 100,000 connections are 1,000 users)")
    idle.add_argument("--sources", type=_positive(int),
                      help="source addresses 127.0.0.2 .. the connections are spread over (bound before connect; "
                           "default one per 10,000 connections, none below that)")
    idle.add_argument("--plot", metavar="FILE.svg",
                      help="write a plot of server KiB per connection against connections held (needs matplotlib: "
                           "imsrv[bench])")
    idle.add_argument("--both", action="store_true",
                      help="measure the embedded server, then the distributed set")
    idle.add_argument("--hold", type=float, default=10.0, help="seconds to hold them (default 10)")
    idle.add_argument("--heartbeat", type=_positive(float), default=30.0,
                      help="seconds between two pings of a connection (default 30, inside the 90 s idle_timeout)")
    idle.add_argument("--concurrency", type=_positive(int),
                      help="connects + auths in flight per worker (default: 200 over all workers, at least 10 each)")
    _tls_options(idle)
    _common(idle, workers=None, timeout=600.0, per_worker=12500)

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


def _start_tls(args):
    """--tls: TLS for the connections of this process and its workers; for a deployment
    the bench starts, a certificate in a temporary directory that its processes get from
    the environment -> that directory (to remove at the end), or None."""
    from . import client
    if not (getattr(args, "tls", False) or getattr(args, "ca_file", None)):
        return None
    if args.api:
        client.use_tls(args.ca_file or True)
        return None
    if args.ca_file:
        raise client.BenchError("--ca-file goes with --api (a deployment the bench starts has its own certificate)")
    from ..cli import cert
    directory = tempfile.mkdtemp(prefix="imsrv-bench-tls-")
    cert_path, key_path, _ = cert.write(directory)
    os.environ["IMSRV_TLS_CERT"], os.environ["IMSRV_TLS_KEY"] = cert_path, key_path
    client.use_tls(cert_path)
    return directory


def _stop_tls(directory):
    if directory is not None:
        os.environ.pop("IMSRV_TLS_CERT", None)
        os.environ.pop("IMSRV_TLS_KEY", None)
        shutil.rmtree(directory, ignore_errors=True)


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
    tls_dir = None
    try:
        deploy.check_arguments(args)
        tls_dir = _start_tls(args)
        if getattr(module, "OPENS_DEPLOYMENTS", False):   # one or more, each fresh
            return module.main(args, functools.partial(deploy.open_deployment, args, say=say), info)
        with deploy.open_deployment(args, say=say) as deployment:
            return module.main(args, deployment, info)
    except (BenchError, deploy.DeployError, WorkerFailed, OSError) as exc:
        print(f"\nimsrv bench {args.scenario}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nimsrv bench {args.scenario}: interrupted; everything it started is stopped and removed",
              file=sys.stderr)
        return 130
    finally:
        _stop_tls(tls_dir)
