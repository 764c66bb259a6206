"""imsrv/logs.py: one line per event, ``server.log_format`` text (key=value, as it always
was) or json (one object per line, the same keys); warnings and errors counted by event
for /metrics.  Last, a real `imsrv serve` with ``log_format = "json"``: every line of its
log parses, and an internal error (the test hook) carries op, user, request id and the
traceback."""
import io
import json
import re
import sys

import pytest

from imsrv import config, logs

from harness.users import befriend, new_user

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def stream():
    out = io.StringIO()
    logs.configure("info", out, "text")
    yield out
    logs.configure("info", sys.stderr, "text")


def lines(stream):
    return stream.getvalue().splitlines()


def test_text_lines_are_key_value_as_before(stream):
    logs.info("login", user="alice", text='say "hi"\nbye', n=3, empty="", none=None)
    [line] = lines(stream)
    assert re.fullmatch(TS, line.split(" ", 1)[0][3:]), line
    assert line.split(" ", 1)[1] == ('level=info event=login user=alice text="say \\"hi\\"\\nbye" n=3 empty="" '
                                     'none=None')


def test_json_lines_carry_the_same_keys(stream):
    logs.configure("info", fmt="json")
    logs.warning("slow", user="bob", n=3, ratio=0.5, ok=True, none=None, addr=("127.0.0.1", 5), text="a\nb")
    [line] = lines(stream)
    obj = json.loads(line)
    assert list(obj) == ["ts", "level", "event", "user", "n", "ratio", "ok", "none", "addr", "text"]
    assert re.fullmatch(TS, obj["ts"]), obj
    assert obj == {"ts": obj["ts"], "level": "warning", "event": "slow", "user": "bob", "n": 3, "ratio": 0.5,
                   "ok": True, "none": None, "addr": "('127.0.0.1', 5)", "text": "a\nb"}


def test_json_internal_error_has_its_traceback_as_a_field(stream):
    logs.configure("info", fmt="json")
    try:
        {}["missing"]
    except KeyError as exc:
        logs.exception("internal_error", exc, service="api", op="friends", user="alice", id=7)
    [line] = lines(stream)     # one line, whatever the traceback holds
    obj = json.loads(line)
    assert (obj["level"], obj["event"], obj["op"], obj["user"], obj["id"]) == ("error", "internal_error", "friends",
                                                                              "alice", 7)
    assert obj["error"] == "KeyError('missing')"
    assert obj["traceback"].startswith("Traceback (most recent call last):\n") and "KeyError" in obj["traceback"]


def test_warnings_are_counted_even_when_not_written(stream):
    logs.configure("error")
    before = logs.event_counts.get(("warning", "test_counted"), 0)
    logs.warning("test_counted", n=1)
    logs.warning("test_counted", n=2)
    logs.info("test_counted_info")
    assert lines(stream) == []
    assert logs.event_counts[("warning", "test_counted")] == before + 2
    assert ("info", "test_counted_info") not in logs.event_counts


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="log_format 'xml'"):
        logs.configure("info", fmt="xml")
    with pytest.raises(config.ConfigError, match=r"\[server\] log_format = 'xml'"):
        config.load(env={"IMSRV_LOG_FORMAT": "xml"})
    with pytest.raises(config.ConfigError, match=r"\[server\] metrics_port = 70000"):
        config.load(env={"IMSRV_SERVER_METRICS_PORT": "70000"})
    cfg = config.load(env={"IMSRV_SERVER_LOG_FORMAT": "json", "IMSRV_METRICS_PORT": "0"})
    assert (cfg.server.log_format, cfg.server.metrics_port) == ("json", 0)
    assert (config.load(env={}).server.log_format, config.load(env={}).server.metrics_port) == ("text", 7090)


@pytest.mark.timeout(60)
def test_a_server_logs_json(server_factory):
    srv = server_factory({"server": {"log_format": "json"}, "test": {"raise_in": "friends"}}, name="jsonlog",
                         start=False)
    srv.env["IMSRV_TEST_HOOKS"] = "1"
    srv.start()
    a, b = new_user(srv, "ja"), new_user(srv, "jb")
    befriend(a, b)
    with srv.api() as api:
        api.error("friends", "internal", token=a.token, id="bug-1")
    objs = [json.loads(line) for line in srv.log_text().splitlines()]   # every line is one object
    assert all(list(o)[:3] == ["ts", "level", "event"] for o in objs), objs
    assert [o["event"] for o in objs if o["event"] in ("metrics", "ready")] == ["metrics", "ready"]
    [bug] = [o for o in objs if o["event"] == "internal_error"]
    assert (bug["service"], bug["op"], bug["user"], bug["id"]) == ("api", "friends", a.name, "bug-1")
    assert "TestHookError" in bug["traceback"] and "\n" in bug["traceback"]
