"""What ``imsrv bench idle`` prints (imsrv/bench/idle.py measures): the markdown tables
of its points (one row per measurement, one per server process of each), what was
measured how, the problems, and with ``--plot`` / ``--json`` the SVG of server KiB per
connection against connections held (imsrv/bench/plot.py) and the JSON document.
"""
from . import report

#: the issue's target: server RSS per idle authenticated connection at most this (KiB)
TARGET_KIB = 8.0


def print_report(args, info, points):
    """Print the points of ``imsrv bench idle`` (:func:`imsrv.bench.idle.measure`'s
    dicts, in the order measured) to stdout: the header, one row per point, one row per
    server process of each point, what was measured how, the problems; then the SVG plot
    of KiB per connection with ``args.plot``, the JSON document with ``args.json``."""
    report.print_header(info)
    report.table(["deployment", "connections", "users x devices", "connected", "held (answered the final ping)",
                  "errors", "retried", "connect + auth s", "connect + auth /s", "server CPU us per connect",
                  "load generator CPU us per connect", "heartbeat pings",
                  "server RSS grown MiB", "KiB per connection"],
                 [[point["deployment"] + (" TLS" if point.get("tls") else ""), report.number(summary["connections"]),
                   f"{summary['users']:,} x {summary['devices']}",
                   *[report.number(summary[key], digits) for key, digits in
                     (("connected", 0), ("held", 0), ("errors", 0))],
                   ", ".join(f"{count:,} {reason}" for reason, count in sorted(summary["retried"].items())) or "0",
                   *[report.number(summary[key], digits) for key, digits in
                     (("connect_seconds", 2), ("connects_per_s", 0), ("server_cpu_us_per_connect", 0),
                      ("loadgen_cpu_us_per_connect", 0), ("pings", 0))],
                   report.number(_mib(summary["rss_grown_kib"]), 1), report.number(summary["kib_per_connection"], 1)]
                  for point in points for summary in (point["summary"],)])
    print()
    rows = [[point["deployment"], report.number(point["summary"]["connections"]), process["process"], process["pid"],
             report.number(process["open_files_limit"]), report.number(process["connections"]),
             report.number(_mib(process["rss_before_kib"]), 1), report.number(_mib(process["rss_after_kib"]), 1),
             report.number(process["kib_per_connection"], 1)] for point in points for process in point["processes"]]
    if rows:
        report.table(["deployment", "connections", "server process", "pid", "open files limit", "connections held",
                      "RSS before MiB", "RSS after MiB", "KiB per connection"], rows)
    else:
        print("No RSS figures: the server was given with --api and no --server-pid.")
    before = {"embedded": "a fresh server process (restarted once the users were registered)",
              "distributed": "fresh gateway processes (they take no part in registering users)"}
    kinds = list(dict.fromkeys(point["deployment"] for point in points))
    print("\nRSS before: " + "; ".join(f"{kind}: {before.get(kind, 'the running server as found')}" for kind in kinds)
          + f"; after: every connection held.  Each count on a fresh deployment.  Held {args.hold:g} s after the "
          f"last connect (heartbeating from each connect on), a ping every {args.heartbeat:g} s per connection; "
          "connects in flight per worker: " + ", ".join(sorted({str(point["concurrency"]) for point in points}))
          + "; a failed connect or an auth answered `unavailable` is retried after a backoff (retried).")
    for point in points:
        sources = point["sources"]
        print(f"- {point['deployment']}, {point['summary']['connections']:,} connections"
              + (" (TLS)" if point.get("tls") else "") + f": {point['workers']} worker processes, "
              + (f"source addresses {sources[0]}..{sources[-1]}" if sources else "source 127.0.0.1")
              + f"; {point['described']}")
    report.print_problems(points)
    if args.plot:
        from .plot import memory_plot
        series = {}
        for point in points:
            series.setdefault(point["deployment"], []).append(
                {"connections": point["summary"]["connections"],
                 "kib_per_connection": point["summary"]["kib_per_connection"]})
        memory_plot(args.plot, series, f"imsrv bench idle: server RSS per idle connection, each count on a fresh "
                                       f"server ({info['date']}, {info['commit'] or 'no commit'})",
                    target_kib=TARGET_KIB)
        print(f"\nPlot: {args.plot}")
    if args.json:
        last = points[-1]
        report.write_json(args.json, {**info, "scenario": "idle", "deployment": last["deployment"],
                                      "parameters": {"connections": args.connections, "devices": args.devices,
                                                     "workers": args.workers, "hold": args.hold,
                                                     "heartbeat": args.heartbeat, "concurrency": args.concurrency,
                                                     "gateways": args.gateways},
                                      "points": points, "summary": last["summary"], "processes": last["processes"]})


def _mib(kib):
    return None if kib is None else kib / 1024.0
