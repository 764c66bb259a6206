"""The plots of ``imsrv bench``, as SVG files, drawn with matplotlib (the ``bench`` extra:
``pip install 'imsrv[bench]'``; imported only when a plot is asked for).

- :func:`latency_plot`: send-to-push latency (p50 solid, p99 dashed, log scale) against
  delivered messages/s, one colour per deployment (``imsrv bench sweep --plot``);
- :func:`memory_plot`: server KiB per held connection against connections held, one
  colour per deployment (``imsrv bench idle --plot``).

Both take ``series`` {deployment name: [point dict, ...]} and write ``path``; the text
stays text in the SVG (no glyph outlines) and its ids are stable from run to run.
"""
from .client import BenchError

COLORS = {"embedded": "#1f77b4", "distributed": "#d62728", "running": "#2ca02c"}


def _matplotlib():
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install 'imsrv[bench]' (or matplotlib) into this "
                         "environment") from None
    return matplotlib, Figure


def _save(fig, path):
    matplotlib, _ = _matplotlib()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "imsrv-bench"}):
        fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})


def latency_plot(path, series, title, target_ms=None):
    """``series``: {name: [{"delivered_per_s", "p50", "p99", "label"}, ...]} (latencies in
    ms; ``label`` marks the point, e.g. "0.5x" or "max").  ``target_ms`` draws a
    horizontal line (the p99 target)."""
    _, Figure = _matplotlib()
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for name, points in series.items():
        points = sorted((point for point in points if point.get("p50") and point.get("p99")),
                        key=lambda point: point["delivered_per_s"])
        if not points:
            continue
        color = COLORS.get(name)
        xs = [point["delivered_per_s"] for point in points]
        ax.plot(xs, [point["p50"] for point in points], "o-", color=color, label=f"{name} p50")
        ax.plot(xs, [point["p99"] for point in points], "s--", color=color, label=f"{name} p99")
        for point in points:
            ax.annotate(point.get("label", ""), (point["delivered_per_s"], point["p99"]), xytext=(3, 5),
                        textcoords="offset points", fontsize=8, color=color)
    if target_ms:
        ax.axhline(target_ms, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"p99 target {target_ms:g} ms", (1, target_ms), xycoords=("axes fraction", "data"),
                    xytext=(-4, -11), textcoords="offset points", fontsize=8, color="grey", ha="right")
    ax.set_yscale("log")
    ax.set_xlim(left=0)
    ax.set_xlabel("messages delivered per second")
    ax.set_ylabel("send-to-push latency, ms (log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", linewidth=0.3)
    ax.xaxis.set_major_formatter("{x:,.0f}")
    ax.legend(fontsize=8)
    _save(fig, path)


def memory_plot(path, series, title, target_kib=None):
    """``series``: {name: [{"connections", "kib_per_connection"}, ...]}; ``target_kib``
    draws a horizontal line (the target)."""
    _, Figure = _matplotlib()
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    top = 0.0
    for name, points in series.items():
        points = sorted((point for point in points if point.get("kib_per_connection") is not None),
                        key=lambda point: point["connections"])
        if not points:
            continue
        xs = [point["connections"] for point in points]
        ys = [point["kib_per_connection"] for point in points]
        top = max(top, *ys)
        ax.plot(xs, ys, "o-", color=COLORS.get(name), label=name)
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.1f}", (x, y), xytext=(3, 5), textcoords="offset points", fontsize=8,
                        color=COLORS.get(name))
    if target_kib:
        top = max(top, target_kib)
        ax.axhline(target_kib, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"target {target_kib:g} KiB", (1, target_kib), xycoords=("axes fraction", "data"),
                    xytext=(-4, 3), textcoords="offset points", fontsize=8, color="grey", ha="right")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0, top=max(1.0, top * 1.2))
    ax.set_xlabel("authenticated idle connections held")
    ax.set_ylabel("server RSS per connection, KiB")
    ax.set_title(title, fontsize=10)
    ax.grid(True, linewidth=0.3)
    ax.xaxis.set_major_formatter("{x:,.0f}")
    ax.legend(fontsize=8)
    _save(fig, path)
