"""Frame codec tests: every test runs against both implementations.

``python`` is the pure-Python twin ``imsrv._codec_py``; ``cython`` is the compiled
``imsrv._codec``.  If the compiled one cannot be imported its parameter is skipped, or
fails when IMSRV_REQUIRE_EXT=1 or CI=true (a codec that silently did not build must not
pass CI).
"""
import importlib
import json
import os
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import codec_vectors as cv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("python", "cython")


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false")


def ext_required():
    return _flag("IMSRV_REQUIRE_EXT") or os.environ.get("CI", "").strip().lower() == "true"


def load_impl(name):
    """The codec module for an implementation name; skip/fail if the extension is missing."""
    if name == "python":
        return importlib.import_module("imsrv._codec_py")
    try:
        return importlib.import_module("imsrv._codec")
    except ImportError as exc:
        msg = (
            f"the Cython codec imsrv._codec is not importable ({exc}); build it with "
            "`python setup.py build_ext --inplace`"
        )
        if ext_required():
            pytest.fail(msg + " (required: IMSRV_REQUIRE_EXT=1 or CI=true)")
        pytest.skip(msg)  # outside CI only: ext_required() is true under CI=true


@pytest.fixture(params=IMPLS)
def codec(request):
    return load_impl(request.param)


def run_python(code, **env_overrides):
    """Run ``code`` in a fresh interpreter with the repo on sys.path and some env changes."""
    env = dict(os.environ)
    for key in ("IMSRV_PUREPYTHON", "IMSRV_REQUIRE_EXT", "IMSRV_JSON", "CI"):
        env.pop(key, None)
    env.update(env_overrides)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=str(ROOT), env=env,
        capture_output=True, text=True, timeout=240,
    )


# --------------------------------------------------------------------------------------
# The vector table
# --------------------------------------------------------------------------------------

VECTOR_CASES = [
    pytest.param(v, how, seed, id=f"{v.name}-{how}" + (f"-{seed}" if how in ("random", "trailing") else ""))
    for v in cv.VECTORS
    for how in cv.HOWS
    for seed in (cv.SEEDS if how in ("random", "trailing") else (0,))
]


@pytest.mark.parametrize("vector,how,seed", VECTOR_CASES)
def test_vector(codec, vector, how, seed):
    cv.run_vector(codec, vector, how, seed)


@pytest.mark.parametrize("as_type", [bytearray, memoryview], ids=["bytearray", "memoryview"])
@pytest.mark.parametrize("vector", cv.VECTORS, ids=[v.name for v in cv.VECTORS])
def test_vector_other_buffer_types(codec, vector, as_type):
    cv.run_vector(codec, vector, "random", seed=7, as_type=as_type)


@pytest.mark.parametrize("vector", cv.VECTORS, ids=[v.name for v in cv.VECTORS])
def test_implementations_agree_exactly(vector):
    """Both implementations give the same items, error messages included."""
    py = load_impl("python")
    cy = load_impl("cython")
    for chunks in (cv.split_whole(vector.data), cv.split_random(vector.data, random.Random(3))):
        _, a = cv.feed_all(py, vector, chunks)
        _, c = cv.feed_all(cy, vector, chunks)
        assert cv.normalise(py, a) == cv.normalise(cy, c)


def test_vector_table_covers_the_contract():
    names = set(cv.BY_NAME)
    for needed in ("binary_exact_max_default", "binary_max_plus_one_default", "binary_zero_length",
                   "binary_header_too_large_no_body", "line_blank_lines", "line_crlf", "binary_not_objects",
                   "binary_invalid_utf8", "binary_invalid_json_then_valid", "line_too_long_default",
                   "binary_unicode_escapes", "line_unicode_utf8"):
        assert needed in names


# --------------------------------------------------------------------------------------
# Decoder behaviour beyond the table
# --------------------------------------------------------------------------------------

def test_mode_detection_and_state(codec):
    dec = codec.Decoder()
    assert dec.mode is None and not dec.failed and dec.buffered == 0
    assert dec.feed(b"") == []
    assert dec.mode is None
    assert dec.feed(b"{") == []
    assert dec.mode == codec.LINE
    assert dec.buffered == 1
    assert dec.feed(b'"a":1}\n') == [{"a": 1}]
    assert dec.buffered == 0
    # The mode is for the connection's whole life.
    assert dec.feed(codec.encode({"a": 2}, codec.BINARY)) == []
    dec2 = codec.Decoder()
    assert dec2.feed(b"\x00") == []
    assert dec2.mode == codec.BINARY


def test_feed_rejects_non_buffers_without_dying(codec):
    dec = codec.Decoder()
    with pytest.raises(TypeError):
        dec.feed("{}\n")
    assert not dec.failed and dec.mode is None
    import array

    assert dec.feed(array.array("B", codec.encode({"a": 1}, "line"))) == [{"a": 1}]


def test_bench_hook_swaps_json_decoder(codec):
    marker = {"stub": True}
    old = codec._set_json_loads(lambda frame: marker, ())
    try:
        assert codec.Decoder().feed(b"{not json}\n") == [marker]
    finally:
        codec._set_json_loads(*old)
    assert codec.Decoder().feed(b'{"a":1}\n') == [{"a": 1}]


def test_forced_mode_and_bad_arguments(codec):
    assert codec.Decoder(mode="line").mode == "line"
    assert codec.Decoder(mode="binary").mode == "binary"
    assert codec.Decoder().max_frame == codec.DEFAULT_MAX_FRAME == 65536
    with pytest.raises(ValueError):
        codec.Decoder(mode="text")
    with pytest.raises(ValueError):
        codec.Decoder(max_frame=0)
    with pytest.raises(TypeError):
        codec.Decoder(max_frame="10")
    with pytest.raises(ValueError):
        codec.encode({}, mode="text")
    with pytest.raises(ValueError):
        codec.encode_batch([{}], mode="text")
    with pytest.raises(ValueError):
        codec.frame_bytes(b"{}", mode="text")


def test_fatal_error_is_last_and_decoder_dies(codec):
    dec = codec.Decoder()
    data = codec.encode({"a": 1}) + struct.pack(">I", 70000) + codec.encode({"b": 2})
    items = dec.feed(data)
    assert items[0] == {"a": 1}
    err = items[1]
    assert isinstance(err, codec.FrameError)
    assert (err.code, err.fatal) == ("too_large", True)
    assert err.message == "frame length 70000 exceeds max_frame 65536"
    assert err.reply() == {"op": "error", "code": "too_large", "message": err.message}
    assert len(items) == 2
    assert dec.failed and dec.buffered == 0
    assert dec.feed(codec.encode({"c": 3})) == []
    assert "too_large" in repr(err)


def test_too_large_header_detected_before_body(codec):
    dec = codec.Decoder()
    assert dec.feed(b"\x00\x01") == []
    assert dec.buffered == 2
    items = dec.feed(b"\x00\x01")  # 65537: known from the header alone
    assert [(i.code, i.fatal) for i in items] == [("too_large", True)]


def test_bad_json_is_not_fatal(codec):
    dec = codec.Decoder()
    items = dec.feed(codec.frame_bytes(b"[1]") + codec.frame_bytes(b"{bad") + codec.encode({"ok": True}))
    assert [i.code for i in items[:2]] == ["bad_json", "bad_json"]
    assert not items[0].fatal and not items[1].fatal
    assert items[2] == {"ok": True}
    assert not dec.failed


def test_frame_error_equality(codec):
    a = codec.FrameError("bad_json", "x")
    assert a == codec.FrameError("bad_json", "x", False)
    assert a != codec.FrameError("bad_json", "y")
    assert a.fatal is False


def test_partial_frame_stays_buffered(codec):
    for mode in ("binary", "line"):
        frame = codec.encode({"op": "send", "body": {"text": "\u00e9" * 50}}, mode)
        dec = codec.Decoder(mode=mode)
        for i in range(len(frame) - 1):
            assert dec.feed(frame[i:i + 1]) == []
            assert dec.buffered == i + 1
        assert dec.feed(frame[-1:]) == [{"op": "send", "body": {"text": "\u00e9" * 50}}]
        assert dec.buffered == 0


def test_line_max_frame_plus_cr_is_pending_not_fatal(codec):
    payload, obj = cv.padded(64)
    dec = codec.Decoder(max_frame=64)
    assert dec.feed(payload + b"\r") == []
    assert not dec.failed
    assert dec.buffered == 65
    assert dec.feed(b"\n") == [obj]
    dec = codec.Decoder(max_frame=64)
    assert dec.feed(payload + b"\r") == []
    items = dec.feed(b"x")
    assert [(i.code, i.fatal) for i in items] == [("too_large", True)]


def test_large_stream_many_frames(codec):
    rng = random.Random(11)
    objs = [{"op": "send", "id": i, "to": "u%d" % rng.randrange(1000), "body": {"text": "x" * rng.randrange(300)}}
            for i in range(3000)]
    for mode in ("binary", "line"):
        data = codec.encode_batch(objs, mode)
        dec = codec.Decoder()
        got = []
        i = 0
        while i < len(data):
            n = rng.randrange(1, 9000)
            got.extend(dec.feed(data[i:i + n]))
            i += n
        assert got == objs
        assert dec.buffered == 0


# --------------------------------------------------------------------------------------
# Memory bounds
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [65536, 4096, 1000003])
def test_line_garbage_memory_bound(codec, chunk):
    """10 MB without a newline: too_large early, and the buffer stays bounded."""
    max_frame = 65536
    dec = codec.Decoder(max_frame=max_frame)
    garbage = b"{" + b"x" * (chunk - 1)
    more = b"x" * chunk
    total = 10 * 1024 * 1024
    fed = 0
    error_at = None
    items = []
    while fed < total:
        got = dec.feed(garbage if fed == 0 else more)
        fed += chunk
        assert dec.buffered <= max_frame + chunk
        if got:
            assert error_at is None, "only one error, then nothing"
            items.extend(got)
            error_at = fed
    assert [(i.code, i.fatal) for i in items] == [("too_large", True)]
    assert error_at <= max_frame + 2 * chunk
    assert dec.failed and dec.buffered == 0


def test_line_garbage_single_huge_chunk(codec):
    dec = codec.Decoder()
    items = dec.feed(b"{" + b"x" * (10 * 1024 * 1024))
    assert [(i.code, i.fatal) for i in items] == [("too_large", True)]
    assert dec.buffered == 0


def test_binary_huge_header_memory_bound(codec):
    dec = codec.Decoder()
    items = dec.feed(b"\x7f\xff\xff\xff")
    assert [(i.code, i.fatal) for i in items] == [("too_large", True)]
    assert dec.buffered == 0
    assert dec.feed(b"x" * 1_000_000) == []
    assert dec.buffered == 0


def test_binary_partial_frame_bounded(codec):
    """A slow peer sending a max-size frame: never more than one frame is held."""
    max_frame = 65536
    payload, obj = cv.padded(max_frame)
    data = codec.frame_bytes(payload) * 3
    dec = codec.Decoder(max_frame=max_frame)
    got = []
    for i in range(0, len(data), 4096):
        got.extend(dec.feed(data[i:i + 4096]))
        assert dec.buffered <= max_frame + 4
    assert got == [obj] * 3


# --------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------

def test_encode_formats(codec):
    obj = {"op": "ping", "t": "\u00e9\U0001F600"}
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    assert codec.encode(obj) == struct.pack(">I", len(payload)) + payload
    assert codec.encode(obj, "binary") == codec.encode(obj)
    assert codec.encode(obj, "line") == payload + b"\n"
    assert codec.frame_bytes(payload) == codec.encode(obj)
    assert codec.frame_bytes(payload, "line") == codec.encode(obj, "line")
    assert codec.frame_bytes(bytearray(payload)) == codec.encode(obj)
    assert codec.frame_bytes(memoryview(payload), "line") == codec.encode(obj, "line")
    # newlines inside strings are escaped, so a line frame is one line
    assert codec.encode({"t": "a\nb\r\n"}, "line").count(b"\n") == 1


def test_encode_errors(codec):
    with pytest.raises(TypeError):
        codec.encode([1, 2])
    with pytest.raises(TypeError):
        codec.encode({"a": object()})
    with pytest.raises((TypeError, ValueError)):
        codec.encode({1: 2})
    with pytest.raises(TypeError):
        codec.encode_batch([{"a": 1}, "x"])
    with pytest.raises(ValueError):
        codec.frame_bytes(b"")
    with pytest.raises(ValueError):
        codec.frame_bytes(b"")
    with pytest.raises(ValueError):
        codec.frame_bytes(b"", "line")
    with pytest.raises(ValueError):
        codec.frame_bytes(b'{"a":\n1}', "line")


def test_encode_batch(codec):
    objs = [{"i": i, "t": "x" * i} for i in range(50)]
    for mode in ("binary", "line"):
        assert codec.encode_batch(objs, mode) == b"".join(codec.encode(o, mode) for o in objs)
        assert codec.encode_batch(iter(objs), mode) == codec.encode_batch(objs, mode)
        assert codec.encode_batch([], mode) == b""
        assert type(codec.encode_batch(objs, mode)) is bytes


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)

PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["binary", "line"])
@PROPERTY_SETTINGS
@given(objs=st.lists(json_objects, max_size=12), data=st.data())
def test_property_roundtrip_any_cuts(impl, mode, objs, data):
    codec = load_impl(impl)
    stream = codec.encode_batch(objs, mode)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts"))
    dec = codec.Decoder()
    got = []
    prev = 0
    for cut in cuts + [len(stream)]:
        got.extend(dec.feed(stream[prev:cut]))
        prev = cut
    assert got == objs
    assert dec.buffered == 0
    assert not dec.failed
    if objs:
        assert dec.mode == mode


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["binary", "line"])
@PROPERTY_SETTINGS
@given(objs=st.lists(json_objects, max_size=12))
def test_property_encode_batch_is_concatenation(impl, mode, objs):
    codec = load_impl(impl)
    assert codec.encode_batch(objs, mode) == b"".join(codec.encode(o, mode) for o in objs)
    from imsrv.jsonlib import dumps

    assert codec.encode_batch(objs, mode) == b"".join(codec.frame_bytes(dumps(o), mode) for o in objs)


@pytest.mark.parametrize("impl", IMPLS)
@PROPERTY_SETTINGS
@given(junk=st.binary(max_size=300), data=st.data())
def test_property_garbage_never_crashes(impl, junk, data):
    """Arbitrary bytes: only dicts and FrameErrors come out, at most one fatal, at the end."""
    codec = load_impl(impl)
    mode = data.draw(st.sampled_from([None, "binary", "line"]), label="mode")
    dec = codec.Decoder(max_frame=data.draw(st.integers(1, 400), label="max_frame"), mode=mode)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(junk)), max_size=8), label="cuts"))
    items = []
    prev = 0
    for cut in cuts + [len(junk)]:
        items.extend(dec.feed(junk[prev:cut]))
        prev = cut
        assert dec.buffered <= dec.max_frame + 4
    for i, item in enumerate(items):
        assert type(item) is dict or isinstance(item, codec.FrameError)
        if isinstance(item, codec.FrameError) and item.fatal:
            assert i == len(items) - 1
    whole = codec.Decoder(max_frame=dec.max_frame, mode=mode).feed(junk)
    assert cv.normalise(codec, whole) == cv.normalise(codec, items)


# --------------------------------------------------------------------------------------
# jsonlib
# --------------------------------------------------------------------------------------

JSONLIB_CHECKS = """
    import sys
    from imsrv import jsonlib
    want = sys.argv[1] if len(sys.argv) > 1 else None
    obj = {"op": "send", "text": "h\\u00e9 \\u65e5 \\U0001F600 \\n\\u2028", "n": 2**63 - 1, "f": 0.1, "l": [None, True]}
    raw = jsonlib.dumps(obj)
    assert type(raw) is bytes, type(raw)
    assert b"\\n" not in raw, raw
    assert "\\U0001F600".encode() in raw and "\\u00e9".encode() in raw, raw   # UTF-8, not \\u escapes
    assert b" " not in raw.replace("h\\u00e9 \\u65e5 \\U0001F600 ".encode(), b"")  # compact
    for data in (raw, bytearray(raw), memoryview(raw), raw.decode()):
        assert jsonlib.loads(data) == obj, data
    assert jsonlib.loads(b'{"t":"\\\\ud83d\\\\ude00\\\\u00e9"}') == {"t": "\\U0001F600\\u00e9"}
    for bad in (b'{"a":"\\xff"}', b'{"a":"\\xed\\xa0\\x80"}', b'{"a":', b"[" * 3000, b"", b"NaN"):
        try:
            jsonlib.loads(bad)
        except jsonlib.JSONDecodeError:
            pass
        else:
            raise AssertionError(f"no JSONDecodeError for {bad[:20]!r}")
        try:
            jsonlib.raw_loads(bad)
        except jsonlib.RAW_LOADS_ERRORS:
            pass
        else:
            raise AssertionError(f"raw_loads accepted {bad[:20]!r}")
    for bad in ({"a": object()}, {1: 2}, {"a": "\\ud800"}, {"a": {1, 2}}):
        try:
            jsonlib.dumps(bad)
        except (TypeError, ValueError):
            pass
        else:
            raise AssertionError(f"dumps accepted {bad!r}")
    print("BACKEND", jsonlib.BACKEND)
"""


@pytest.mark.parametrize("backend", ["orjson", "rapidjson"])
def test_jsonlib_backends(backend):
    proc = run_python(JSONLIB_CHECKS, IMSRV_JSON=backend)
    assert proc.returncode == 0, proc.stderr
    assert f"BACKEND {backend}" in proc.stdout


def test_jsonlib_unknown_backend():
    proc = run_python("import imsrv.jsonlib", IMSRV_JSON="simplejson")
    assert proc.returncode != 0
    assert "IMSRV_JSON" in proc.stderr


# --------------------------------------------------------------------------------------
# imsrv.codec: implementation selection
# --------------------------------------------------------------------------------------

def test_public_module_reexports():
    import imsrv.codec as c
    from imsrv import jsonlib

    expected = "python" if _flag("IMSRV_PUREPYTHON") else "cython"
    if expected == "cython":
        load_impl("cython")  # skip/fail like the other cython params if it is not built
    assert c.IMPLEMENTATION == expected
    assert c.JSON_BACKEND == jsonlib.BACKEND
    impl = load_impl(expected)
    for name in ("Decoder", "FrameError", "encode", "encode_batch", "frame_bytes", "BINARY", "LINE",
                 "DEFAULT_MAX_FRAME"):
        assert getattr(c, name) is getattr(impl, name), name
    assert c.loads is jsonlib.loads and c.dumps is jsonlib.dumps
    assert c.Decoder().feed(c.encode({"a": 1})) == [{"a": 1}]


def test_purepython_env_selects_twin():
    proc = run_python(
        "import imsrv.codec as c; print(c.IMPLEMENTATION, c.Decoder.__module__)", IMSRV_PUREPYTHON="1"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["python", "imsrv._codec_py"]
    assert "WARNING" not in proc.stderr


def test_purepython_zero_means_off():
    load_impl("cython")
    proc = run_python("import imsrv.codec as c; print(c.IMPLEMENTATION)", IMSRV_PUREPYTHON="0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cython"]


HIDE_EXT = "import sys; sys.modules['imsrv._codec'] = None  # makes `from imsrv import _codec` fail\n"


def test_missing_extension_falls_back_loudly():
    code = HIDE_EXT + textwrap.dedent("""
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import imsrv.codec as c
        print(c.IMPLEMENTATION)
        print([(w.category.__name__, str(w.message)) for w in caught])
    """)
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "python"
    assert "RuntimeWarning" in lines[1] and "Cython" in lines[1] and "build_ext" in lines[1]
    assert proc.stderr.count("WARNING: imsrv: the Cython frame codec") == 1


def test_missing_extension_is_an_error_when_required():
    proc = run_python(HIDE_EXT + "import imsrv.codec", IMSRV_REQUIRE_EXT="1")
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and "IMSRV_REQUIRE_EXT" in proc.stderr


def test_rapidjson_backend_roundtrip():
    code = """
        import imsrv.codec as c
        import codec_vectors as cv
        from imsrv import _codec_py
        print(c.JSON_BACKEND, c.IMPLEMENTATION)
        obj = {"op": "send", "body": {"text": "h\\u00e9llo \\u65e5\\u672c \\U0001F600"}, "n": [1, 2.5, None]}
        for mode in ("binary", "line"):
            frame = c.encode(obj, mode)
            assert "\\U0001F600".encode() in frame, frame
            assert c.Decoder().feed(frame) == [obj]
            assert c.encode_batch([obj, obj], mode) == frame * 2
        assert c.loads(c.dumps(obj)) == obj
        runs = cv.check_all(c)
        runs += cv.check_all(_codec_py)
        print("runs", runs)
    """
    proc = run_python(code, IMSRV_JSON="rapidjson")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.split()
    assert first[0] == "rapidjson"
    assert int(proc.stdout.split("runs")[1]) > 0
