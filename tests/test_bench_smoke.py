"""Smoke runs of ``imsrv bench`` (imsrv/bench): each scenario, tiny, against the embedded
deployment the bench starts itself, as the subprocess a person would run.

This checks that the load generator works end to end (it starts and stops its server,
its workers set up users and drive them, its JSON holds sane numbers); it asserts no
performance.  Together these take a few seconds each.
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


def test_storm(tmp_path):
    result = bench(tmp_path, "storm", "--connections", "10")
    summary = result["summary"]
    assert summary["ready"] == summary["back"] == 10 and summary["not_back"] == 0
    assert summary["setup_failures"] == 0 and summary["messages_per_client"] == 1
    assert 0 < summary["down_seconds"] <= summary["all_back_seconds"]
    assert summary["reconnect_attempts"] >= 10
