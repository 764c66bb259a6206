#!/usr/bin/env python3
"""Throughput and latency as the offered load grows: bench/loadgen.py run at several
windows (sends in flight per sender) against the embedded server and the distributed
set, each started once by this script.  Prints a Markdown table per deployment and
writes an SVG plot of p50/p99 latency against delivered messages/s.

    python bench/sweep.py                                  # both deployments
    python bench/sweep.py --only embedded --windows 1,4,16
    python bench/sweep.py --plot bench/sweep.svg           # the default plot file

Bounded: one loadgen run per window (each with its own --timeout), 127.0.0.1 only.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import loadgen  # noqa: E402  (the servers it starts, its config)

COLORS = {"embedded": "#1f77b4", "distributed": "#d62728"}


def run_point(api, users, messages, window, timeout):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    try:
        cmd = [sys.executable, os.path.join(HERE, "loadgen.py"), "--api", api, "--users", str(users),
               "--messages", str(messages), "--window", str(window), "--timeout", str(timeout), "--json", out]
        subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, timeout=timeout + 120)
        with open(out) as f:
            return json.load(f)
    finally:
        os.unlink(out)


def sweep(name, api, args):
    rows = []
    for w in args.windows:
        t0 = time.monotonic()
        r = run_point(api, args.users, args.messages, w, args.timeout)
        rows.append(r)
        print(f"sweep: {name} window {w}: {r['msgs_per_s']:,.0f} msgs/s, p50 {r['p50_ms']:.1f} ms,"
              f" p99 {r['p99_ms']:.1f} ms ({time.monotonic() - t0:.1f}s)", flush=True)
    return rows


def table(name, rows):
    out = [f"{name}:", "", "| window | msgs delivered | msgs/s | p50 ms | p90 ms | p99 ms |",
           "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['window']} | {r['delivered']} | {r['msgs_per_s']:.0f} | {r['p50_ms']:.1f} |"
                   f" {r['p90_ms']:.1f} | {r['p99_ms']:.1f} |")
    return "\n".join(out)


def nice_ticks(top, n=5):
    """Round tick values 0, step, 2*step, ... covering ``top`` (step 1, 2 or 5 x 10^k)."""
    raw = top / n
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(top / step)) + 1)]


def svg_plot(series, title):
    """p50 (solid) and p99 (dashed) latency against msgs/s, one colour per deployment."""
    W, H, L, B, T, R = 640, 400, 70, 50, 40, 150
    pts = [r for rows in series.values() for r in rows]
    xticks = nice_ticks(max(r["msgs_per_s"] for r in pts) * 1.05)
    yticks = nice_ticks(max(r["p99_ms"] for r in pts) * 1.05)
    xmax, ymax = xticks[-1], yticks[-1]

    def x(v):
        return L + v / xmax * (W - L - R)

    def y(v):
        return H - B - v / ymax * (H - B - T)

    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
         f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
         f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
         f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">messages delivered per second</text>',
         f'<text x="16" y="{(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 16 {(T + H - B) / 2})">'
         'send to push latency, ms</text>']
    for xv in xticks:
        s.append(f'<text x="{x(xv):.0f}" y="{H - B + 16}" text-anchor="middle">{xv:,.0f}</text>')
    for yv in yticks:
        s.append(f'<text x="{L - 6}" y="{y(yv) + 4:.0f}" text-anchor="end">{yv:.0f}</text>')
        s.append(f'<line x1="{L}" y1="{y(yv):.1f}" x2="{W - R}" y2="{y(yv):.1f}" stroke="#eee"/>')
    legend_y = T + 10
    for name, rows in series.items():
        color = COLORS.get(name, "black")
        for key, dash in (("p50_ms", ""), ("p99_ms", ' stroke-dasharray="5,4"')):
            path = " ".join(f"{x(r['msgs_per_s']):.1f},{y(r[key]):.1f}" for r in rows)
            s.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
            for r in rows:
                s.append(f'<circle cx="{x(r["msgs_per_s"]):.1f}" cy="{y(r[key]):.1f}" r="3" fill="{color}"/>')
            s.append(f'<line x1="{W - R + 10}" y1="{legend_y}" x2="{W - R + 35}" y2="{legend_y}" '
                     f'stroke="{color}" stroke-width="2"{dash}/>')
            s.append(f'<text x="{W - R + 40}" y="{legend_y + 4}">{name} {key[:3]}</text>')
            legend_y += 18
        for r in rows:  # window labels on the p50 curve
            s.append(f'<text x="{x(r["msgs_per_s"]) + 4:.1f}" y="{y(r["p50_ms"]) + 14:.1f}" fill="{color}"'
                     f' font-size="10">w{r["window"]}</text>')
    s.append("</svg>")
    return "\n".join(s)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", default="1,2,4,8,16,32",
                    type=lambda v: [int(w) for w in v.split(",")], help="sends in flight per sender")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--messages", type=int, default=100, help="messages per sender per point")
    ap.add_argument("--timeout", type=float, default=60.0, help="per point")
    ap.add_argument("--only", choices=("embedded", "distributed"))
    ap.add_argument("--plot", default=os.path.join(HERE, "sweep.svg"), help="SVG file to write")
    args = ap.parse_args()

    series = {}
    for name in ("embedded", "distributed"):
        if args.only and args.only != name:
            continue
        tmp = tempfile.mkdtemp(prefix=f"imsrv-sweep-{name}-")
        proc = dep = None
        try:
            print(f"sweep: starting the {name} server ...", flush=True)
            if name == "embedded":
                proc, api = loadgen.start_server(tmp)
            else:
                dep, api = loadgen.start_distributed(tmp)
            series[name] = sweep(name, api, args)
        finally:
            loadgen.stop_servers(proc, dep, tmp)
    print()
    print(f"Command: python bench/sweep.py --windows {','.join(map(str, args.windows))} --users {args.users}"
          f" --messages {args.messages}" + (f" --only {args.only}" if args.only else ""))
    print(f"Machine: {loadgen.machine()}")
    for name, rows in series.items():
        print()
        print(table(name, rows))
    with open(args.plot, "w") as f:
        f.write(svg_plot(series, f"imsrv load sweep ({args.users} users, windows {args.windows[0]}-{args.windows[-1]})"))
    print(f"\nsweep: plot written to {args.plot}")


if __name__ == "__main__":
    main()
