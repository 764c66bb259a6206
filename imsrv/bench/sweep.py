"""``imsrv bench sweep``: latency against throughput, on one deployment (or both).

First ``pairs`` unpaced (``--messages`` per sender, as fast as acks and the window allow):
its delivered/s is the maximum rate M.  Then ``pairs --rate`` at each fraction f of
``--fractions`` (offered f x M sends/s in total), each point lasting about ``--seconds``
(its messages per sender are f x M x seconds / pairs).  Every run uses fresh users on the
same deployment; the pairs shape (``--pairs``, ``--batch``, ``--window``, ``--size``) is
the same throughout.

Printed: one table per deployment (offered/s, achieved sent/s and delivered/s, latency
p50/p90/p99/max) and the issue's target, "p99 send-to-push latency < 10 ms at half of the
maximum rate", read at the 0.5 point when there is one.  ``--plot FILE.svg``: p50 and p99
(log scale) against delivered/s (imsrv/bench/plot.py).  ``--both`` sweeps the embedded
server, then the distributed set, each started fresh, into one table and one plot.
"""
import math

from . import report
from .pairs import run_pairs

#: the deployments opened by main itself (cli.run hands it an opener, not a deployment)
OPENS_DEPLOYMENTS = True
#: the issue's target: p99 send-to-push latency below this at half of the maximum rate
TARGET_P99_MS = 10.0


def messages_for(rate, seconds, pairs):
    """Messages per sender for a paced point of about ``seconds`` at ``rate`` in total."""
    return max(1, math.ceil(rate * seconds / pairs))


def sweep(args, deployment, say):
    """The points of one deployment: [{"fraction" (None: the unpaced run), "messages",
    "result"}, ...]."""
    def one(label, messages, rate):
        progress = report.Progress(f"sweep deployment={deployment.kind} point={label}",
                                   rates=("acked", "delivered"))
        result = run_pairs(deployment.api, args.pairs, messages, args.batch, args.window, args.size, args.workers,
                           progress, args.timeout, rate=rate)
        progress.done()
        say(f"{deployment.kind} {label}: offered {report.number(rate)}/s, delivered "
            f"{report.number(result['delivered_per_s'])}/s, p50 {report.number(result['latency_ms']['p50'], 1)} ms, "
            f"p99 {report.number(result['latency_ms']['p99'], 1)} ms, errors {result['errors']}")
        return result

    top = one("max", args.messages, None)
    points = [{"fraction": None, "messages": args.messages, "result": top}]
    maximum = top["delivered_per_s"]
    for fraction in args.fractions:
        rate = fraction * maximum
        messages = messages_for(rate, args.seconds, args.pairs)
        points.append({"fraction": fraction, "messages": messages,
                       "result": one(f"{fraction:g}x", messages, rate)})
    return points


def complete(args, point):
    result = point["result"]
    return (result["errors"] == 0 and result["acked"] == result["sent"] == args.pairs * point["messages"]
            and result["delivered"] == result["acked"])


def label(point):
    return "max" if point["fraction"] is None else f"{point['fraction']:g}x"


def at_half(points):
    """The point at fraction 0.5, or None."""
    return next((point for point in points if point["fraction"] == 0.5), None)


COLUMNS = ["deployment", "point", "pairs x messages", "offered/s", "sent/s", "delivered/s", "errors", "seconds",
           "p50 ms", "p90 ms", "p99 ms", "max ms"]


def main(args, open_deployment, info):
    """Sweep each deployment, table, --plot, --json -> exit status."""
    kinds = ["embedded", "distributed"] if args.both else [None]
    series, described = {}, {}
    say = report.Progress("sweep").say
    for kind in kinds:
        with open_deployment(kind=kind) as deployment:
            series[deployment.kind] = sweep(args, deployment, say)
            described[deployment.kind] = deployment.describe()

    report.print_header(info)
    rows = []
    for name, points in series.items():
        for point in points:
            result = point["result"]
            rows.append([name, label(point), f"{args.pairs} x {point['messages']}", report.number(result["rate"]),
                         report.number(result["sent_per_s"]), report.number(result["delivered_per_s"]),
                         report.number(result["errors"]), report.number(result["seconds"], 2),
                         *report.latency_cells(result["latency_ms"])])
    report.table(COLUMNS, rows)
    print(f"\nShape: {args.pairs} pairs, {args.batch} sends per write, up to {args.window} unacked per sender, body "
          f"{args.size} chars, {args.workers} worker processes; \"max\" is unpaced ({args.messages} messages per "
          f"sender), each paced point (offered/s = fraction x max delivered/s) lasts about {args.seconds:g} s.")
    for name, text in described.items():
        print(f"- {name}: {text}")
    verdicts = {}
    for name, points in series.items():
        half = at_half(points)
        if half is None:
            continue
        p99 = half["result"]["latency_ms"]["p99"]
        verdicts[name] = p99 is not None and p99 < TARGET_P99_MS
        print(f"\n{name}: p99 at half of the maximum rate ({report.number(half['result']['rate'])}/s offered): "
              f"{report.number(p99, 1)} ms, target < {TARGET_P99_MS:g} ms: "
              + ("met" if verdicts[name] else "missed"))
    report.print_problems([point["result"] for points in series.values() for point in points])
    if args.plot:
        from .plot import latency_plot
        latency_plot(args.plot, {name: [{"delivered_per_s": point["result"]["delivered_per_s"],
                                         "p50": point["result"]["latency_ms"]["p50"],
                                         "p99": point["result"]["latency_ms"]["p99"], "label": label(point)}
                                        for point in points] for name, points in series.items()},
                     f"imsrv bench sweep: {args.pairs} pairs, {args.batch} per write, window {args.window} "
                     f"({info['date']}, {info['commit'] or 'no commit'})", target_ms=TARGET_P99_MS)
        print(f"\nPlot: {args.plot}")
    if args.json:
        report.write_json(args.json, {**info, "scenario": "sweep",
                                      "parameters": {"pairs": args.pairs, "messages": args.messages,
                                                     "batch": args.batch, "window": args.window, "size": args.size,
                                                     "workers": args.workers, "fractions": args.fractions,
                                                     "seconds": args.seconds},
                                      "deployments": described, "series": series,
                                      "p99_target_met_at_half": verdicts})
    return 0 if all(complete(args, point) for points in series.values() for point in points) else 1
