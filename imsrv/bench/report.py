"""What ``imsrv bench`` prints: the live progress line, the final markdown tables, --json.

Every result names what produced it (the issue asks each table for its command, machine,
date and commit), so :func:`header` carries:

- the command line as typed (``imsrv bench pairs --pairs 50 ...``);
- the machine: CPU model, cores, Python, the frame codec in use (Cython or pure Python,
  and its JSON backend), and that load generator and server share the machine;
- the date (UTC) and, in a git checkout, the commit (``+dirty`` with uncommitted changes).

The progress line goes to stderr once a second as ``key=value`` pairs (rates per second for
the counters that move), rewritten in place on a terminal, one line per second otherwise.
Tables go to stdout.
"""
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time

#: the checkout imsrv runs from (it may be an installed package, without one)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            found = re.search(r"model name\s*:\s*(.*)", stream.read())
    except OSError:
        return platform.processor() or "unknown CPU"
    return found.group(1).strip() if found else (platform.processor() or "unknown CPU")


def machine():
    """CPU model, cores, Python, codec: the line every result carries."""
    from .. import codec
    return (f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, codec "
            f"{codec.IMPLEMENTATION} ({codec.JSON_BACKEND}); load generator and server on this machine")


def git_commit():
    """The checkout's commit (short hash, ``+dirty`` with local changes), or None."""
    if not os.path.isdir(os.path.join(ROOT, ".git")):
        return None
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def header(command):
    """{"command", "machine", "date", "commit"} of this run."""
    return {"command": command, "machine": machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": git_commit()}


def print_header(info, out=None):
    out = out or sys.stdout
    out.write(f"\nCommand: `{info['command']}`\n")
    out.write(f"Machine: {info['machine']}\n")
    out.write(f"Date: {info['date']}" + (f", commit {info['commit']}" if info["commit"] else "") + "\n\n")


def number(value, digits=0):
    """A table cell: thousands separators, ``digits`` decimals, ``-`` for missing."""
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:   # NaN
        return "-"
    if isinstance(value, int) and digits == 0:
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def table(columns, rows, out=None):
    """A markdown table: ``columns`` are the titles, ``rows`` lists of cell strings."""
    out = out or sys.stdout
    out.write("| " + " | ".join(columns) + " |\n")
    out.write("|" + "---|" * len(columns) + "\n")
    for row in rows:
        out.write("| " + " | ".join(str(cell) for cell in row) + " |\n")
    out.flush()


def latency_cells(latency_ms, keys=("p50", "p90", "p99", "max")):
    return [number(latency_ms.get(key), 1) for key in keys]


def print_problems(results, most=10):
    """Print the first ``most`` problems of a list of results (each with a "problems" list)."""
    problems = [problem for result in results for problem in result.get("problems", ())]
    for problem in problems[:most]:
        print(f"problem: {problem}")


def write_json(path, document):
    """Write ``document`` to ``path`` (``-`` is stdout), pretty-printed."""
    text = json.dumps(document, indent=2, sort_keys=False, default=str) + "\n"
    if path == "-":
        sys.stdout.write(text)
        return
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(text)


class Progress:
    """The live progress line: ``progress(totals, elapsed)``, the callable run_shards takes.

    ``rates`` names the counters whose per-second rate is shown too (from the difference
    to the previous call)."""

    def __init__(self, label, rates=(), out=None):
        self.label = label
        self.rates = rates
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.previous = {}
        self.previous_elapsed = 0.0
        self.dirty = False
        self.last_line = 0.0

    def __call__(self, totals, elapsed):
        parts = [f"bench={self.label}", f"elapsed={elapsed:.1f}s"]
        span = max(elapsed - self.previous_elapsed, 1e-9)
        for key, value in totals.items():
            parts.append(f"{key}={value}")
            if key in self.rates:
                parts.append(f"{key}_per_s={(value - self.previous.get(key, 0)) / span:.0f}")
        self.previous, self.previous_elapsed = dict(totals), elapsed
        self.line(" ".join(parts))

    def line(self, text):
        if self.tty:
            self.out.write("\r\x1b[K" + text)
            self.dirty = True
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def throttled(self, text, final=False):
        """``line(text)`` at most once a second (always when ``final``): for counters that
        move faster than a person reads."""
        now = time.monotonic()
        if final or now - self.last_line >= 1.0:
            self.last_line = now
            self.line(text)

    def say(self, text):
        """A line of its own (a phase starting), not overwritten by the next progress."""
        self.done()
        self.out.write(f"bench={self.label} {text}\n")
        self.out.flush()

    def done(self):
        """End the in-place line (call before printing anything else)."""
        if self.dirty:
            self.out.write("\n")
            self.out.flush()
            self.dirty = False
        self.previous, self.previous_elapsed = {}, 0.0
