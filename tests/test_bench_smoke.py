"""Smoke runs of ``imsrv bench`` (imsrv/bench): each scenario, tiny, against the embedded
deployment the bench starts itself, as the subprocess a person would run.

This checks that the load generator works end to end (it starts and stops its server,
its workers set up users and drive them, its JSON holds sane numbers); it asserts no
performance.  Together these take a few seconds each.  The plots (sweep, idle) need
matplotlib, which the test extra installs.
"""
import json
import subprocess
import sys

from harness.procs import REPO_ROOT, child_env

#: seconds one smoke run may take (a few are normal)
RUN_TIMEOUT = 120


def bench(tmp_path, *args):
    """Run ``imsrv bench ARGS --json FILE`` -> the JSON it wrote (the run must exit 0)."""
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", "imsrv.cli.main", "bench", *args, "--json", str(out)],
                          cwd=str(REPO_ROOT), env=child_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    assert "| " in proc.stdout and "Machine:" in proc.stdout, proc.stdout   # the table and its header
    result = json.loads(out.read_text())
    assert result["command"].startswith("imsrv bench ") and result["machine"] and result["date"]
    return result


def test_pairs(tmp_path):
    result = bench(tmp_path, "pairs", "--pairs", "2", "--messages", "50", "--window", "20")
    (run,) = result["rounds"]["imsrv"]
    assert run["sent"] == run["acked"] == run["delivered"] == 100
    assert run["errors"] == 0
    assert run["acked_per_s"] > 0 and run["delivered_per_s"] > 0
    latency = run["latency_ms"]
    assert 0 <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]


def test_pairs_paced(tmp_path):
    result = bench(tmp_path, "pairs", "--pairs", "2", "--messages", "40", "--window", "20", "--rate", "200")
    assert result["parameters"]["rate"] == 200
    (run,) = result["rounds"]["imsrv"]
    assert run["sent"] == run["acked"] == run["delivered"] == 80 and run["errors"] == 0
    assert run["rate"] == 200
    # paced: about 0.4 s of sending, not the few ms an unpaced run of 80 takes
    assert 100 <= run["sent_per_s"] <= 400 and run["delivered_per_s"] <= 400, run
    assert run["seconds"] >= 0.2


def test_sweep_with_plot(tmp_path):
    plot = tmp_path / "sweep.svg"
    result = bench(tmp_path, "sweep", "--pairs", "2", "--messages", "50", "--window", "20",
                   "--fractions", "0.25,0.5", "--seconds", "0.3", "--plot", str(plot))
    points = result["series"]["embedded"]
    assert [point["fraction"] for point in points] == [None, 0.25, 0.5]
    top = points[0]["result"]
    assert top["rate"] is None and top["delivered"] == 100 and top["delivered_per_s"] > 0
    for point in points[1:]:
        run = point["result"]
        assert run["rate"] == point["fraction"] * top["delivered_per_s"]
        assert run["errors"] == 0 and run["delivered"] == run["sent"] == 2 * point["messages"]
        assert 0 <= run["latency_ms"]["p50"] <= run["latency_ms"]["p99"]
    assert "embedded" in result["p99_target_met_at_half"]
    text = plot.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and text.rstrip().endswith("</svg>")


def test_group(tmp_path):
    result = bench(tmp_path, "group", "--members", "5", "--messages", "10")
    (group,) = result["groups"]
    assert group["members"] == 5 and group["acked"] == group["messages"] == 10
    assert group["deliveries"] == group["expected_deliveries"] == 4 * 10
    assert group["errors"] == 0 and group["incomplete_messages"] == 0
    assert group["deliveries_per_s"] > 0
    assert 0 <= group["latency_to_last_ms"]["p50"] <= group["latency_to_last_ms"]["max"]


def test_idle(tmp_path):
    result = bench(tmp_path, "idle", "--connections", "20", "--hold", "1", "--heartbeat", "0.5")
    summary = result["summary"]
    assert summary["connected"] == summary["held"] == 20 and summary["errors"] == 0
    assert summary["connects_per_s"] > 0 and summary["pings"] > 0
    (process,) = result["processes"]
    assert process["process"] == "imsrv serve" and process["connections"] == 20
    assert process["rss_before_kib"] > 0 and process["rss_after_kib"] > 0
    assert process["kib_per_connection"] is not None
    assert process["open_files_limit"] is None or process["open_files_limit"] > 1000


def test_idle_counts_devices_sources_and_plot(tmp_path):
    plot = tmp_path / "idle.svg"
    result = bench(tmp_path, "idle", "--connections", "10,20", "--devices", "5", "--sources", "2", "--hold", "0.5",
                   "--plot", str(plot))
    first, second = result["points"]
    assert first["summary"]["connections"] == 10 and second["summary"]["connections"] == 20
    assert (second["summary"]["users"], second["summary"]["devices"]) == (4, 5)
    assert second["sources"] == ["127.0.0.2", "127.0.0.3"]
    for point in (first, second):
        assert point["summary"]["errors"] == 0 and point["summary"]["held"] == point["summary"]["connections"]
    assert first["processes"][0]["pid"] != second["processes"][0]["pid"]   # a fresh server each
    text = plot.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and text.rstrip().endswith("</svg>")


def test_storm(tmp_path):
    result = bench(tmp_path, "storm", "--connections", "10")
    summary = result["summary"]
    assert summary["ready"] == summary["back"] == 10 and summary["not_back"] == 0
    assert summary["setup_failures"] == 0 and summary["messages_per_client"] == 1
    assert 0 < summary["down_seconds"] <= summary["all_back_seconds"]
    assert summary["reconnect_attempts"] >= 10
