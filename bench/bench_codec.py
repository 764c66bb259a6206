"""Frame codec micro-benchmarks (pytest-benchmark).  Run them with ``make bench``
(bench/run.py), which runs this file once per JSON backend and writes bench/RESULTS.md.

    IMSRV_JSON=orjson .venv/bin/python -m pytest bench/bench_codec.py --benchmark-only

Not collected by the test suite (it lives outside tests/, and its name is not test_*).
The JSON backend is the process's (``IMSRV_JSON``), exactly as the server would use it.

Cases, each for binary and line framing:

* ``decode-batch``: one ``feed`` of a 64 KiB buffer of realistic chat frames (150-250
  bytes of JSON each); ``floor`` is the JSON library's own ``loads`` of the same payloads,
  already split (a list comprehension): what decoding costs with framing for free.
* ``decode-one``: ``feed`` of one ~166-byte frame into a live decoder vs ``loads``.
* ``split-batch``: the decoders with the JSON decoder swapped for a stub that returns a
  constant dict, i.e. the cost of framing alone (header/newline scanning, slicing, the
  type check, the result list).  ``floor`` here is calling the stub on pre-split payloads.
* ``encode-one`` / ``encode-batch``: ``encode`` / ``encode_batch`` vs ``dumps`` alone.

``extra_info`` carries what bench/run.py needs: case, mode, impl, frames per round.
"""
import functools
import importlib
import os
import random

import pytest

from imsrv import jsonlib

BACKEND = jsonlib.BACKEND
BATCH_BYTES = 64 * 1024
MODES = ("binary", "line")


def _load(name):
    if name == "python":
        return importlib.import_module("imsrv._codec_py")
    try:
        return importlib.import_module("imsrv._codec")
    except ImportError as exc:
        if os.environ.get("IMSRV_REQUIRE_EXT", "") not in ("", "0"):
            raise
        pytest.skip(f"Cython codec not built: {exc}")


IMPLS = ("cython", "python")

WORDS = (
    "ok see you at the office tomorrow lunch meeting call me when you are free did you get "
    "my last message the build is green again ship it thanks a lot great idea sounds good "
    "running late five minutes caf\u00e9 na\u00efve r\u00e9sum\u00e9 \U0001F600 \U0001F44D"
).split()


def chat_message(i, text):
    return {"op": "send", "id": i, "to": "bob", "cmid": f"c-{i:08x}5d414c8e9a1b3e6f2d8c0a17",
            "body": {"text": text}}


def single_message():
    base = len(jsonlib.dumps(chat_message(17, "")))
    text = ("Are we still on for lunch tomorrow? I booked the table near the office for noon. " * 3)
    return chat_message(17, text[:166 - base])  # 166 bytes of JSON


def batch_messages(seed=2024):
    """Chat messages whose JSON is 150-250 bytes, adding up to at most 64 KiB framed."""
    rng = random.Random(seed)
    out = []
    total = 0
    while True:
        base = len(jsonlib.dumps(chat_message(len(out), "")))
        want = rng.randint(162, 250)
        text = ""
        while True:
            longer = (text + " " + rng.choice(WORDS)).strip()
            if base + len(longer.encode()) > want:
                break
            text = longer
        msg = chat_message(len(out), text)
        size = len(jsonlib.dumps(msg)) + 4
        if total + size > BATCH_BYTES:
            return out
        out.append(msg)
        total += size


ONE = single_message()
ONE_PAYLOAD = jsonlib.dumps(ONE)
MSGS = batch_messages()
PAYLOADS = [jsonlib.dumps(m) for m in MSGS]
assert len(ONE_PAYLOAD) == 166, len(ONE_PAYLOAD)
assert all(150 <= len(p) <= 250 for p in PAYLOADS), (min(map(len, PAYLOADS)), max(map(len, PAYLOADS)))


def _info(benchmark, case, mode, impl, frames, nbytes):
    benchmark.extra_info.update(
        {"case": case, "mode": mode, "impl": impl, "frames": frames, "bytes": nbytes, "backend": BACKEND}
    )


# -- decoding -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_decode_batch(benchmark, impl, mode):
    codec = _load(impl)
    batch = codec.encode_batch(MSGS, mode)
    dec = codec.Decoder()
    assert dec.feed(batch) == MSGS and dec.mode == mode
    _info(benchmark, "decode-batch", mode, impl, len(MSGS), len(batch))
    benchmark.group = f"decode-batch-{mode}"
    benchmark(dec.feed, batch)


def test_decode_batch_floor(benchmark):
    loads = jsonlib.raw_loads
    payloads = PAYLOADS

    def floor():
        return [loads(p) for p in payloads]

    assert floor() == MSGS
    _info(benchmark, "decode-batch", "any", "floor", len(MSGS), sum(map(len, PAYLOADS)))
    benchmark.group = "decode-batch-floor"
    benchmark(floor)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_decode_one(benchmark, impl, mode):
    codec = _load(impl)
    frame = codec.encode(ONE, mode)
    dec = codec.Decoder()
    assert dec.feed(frame) == [ONE] and dec.mode == mode
    _info(benchmark, "decode-one", mode, impl, 1, len(frame))
    benchmark.group = f"decode-one-{mode}"
    benchmark(dec.feed, frame)


def test_decode_one_floor(benchmark):
    assert jsonlib.raw_loads(ONE_PAYLOAD) == ONE
    _info(benchmark, "decode-one", "any", "floor", 1, len(ONE_PAYLOAD))
    benchmark.group = "decode-one-floor"
    benchmark(jsonlib.raw_loads, ONE_PAYLOAD)


# -- splitting alone (stub JSON decoder) ------------------------------------------------

STUB_RESULT = {"op": "send"}
# A C-level callable of one argument returning a constant dict: {"k": R}.get("k", frame).
STUB = functools.partial({"k": STUB_RESULT}.get, "k")


@pytest.fixture
def stub_loads():
    mods = [_load("python")]
    try:
        mods.append(importlib.import_module("imsrv._codec"))
    except ImportError:
        pass
    saved = [(m, m._set_json_loads(STUB, ())) for m in mods]
    yield
    for m, (loads, errors) in saved:
        m._set_json_loads(loads, errors)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_split_batch(benchmark, stub_loads, impl, mode):
    codec = _load(impl)
    batch = codec.encode_batch(MSGS, mode)
    dec = codec.Decoder()
    assert dec.feed(batch) == [STUB_RESULT] * len(MSGS)
    _info(benchmark, "split-batch", mode, impl, len(MSGS), len(batch))
    benchmark.group = f"split-batch-{mode}"
    benchmark(dec.feed, batch)


def test_split_batch_floor(benchmark):
    payloads = PAYLOADS
    stub = STUB

    def floor():
        return [stub(p) for p in payloads]

    _info(benchmark, "split-batch", "any", "floor", len(MSGS), sum(map(len, PAYLOADS)))
    benchmark.group = "split-batch-floor"
    benchmark(floor)


# -- encoding -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_encode_one(benchmark, impl, mode):
    codec = _load(impl)
    _info(benchmark, "encode-one", mode, impl, 1, len(codec.encode(ONE, mode)))
    benchmark.group = f"encode-one-{mode}"
    benchmark(codec.encode, ONE, mode)


def test_encode_one_floor(benchmark):
    _info(benchmark, "encode-one", "any", "floor", 1, len(ONE_PAYLOAD))
    benchmark.group = "encode-one-floor"
    benchmark(jsonlib.dumps, ONE)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_encode_batch(benchmark, impl, mode):
    codec = _load(impl)
    out = codec.encode_batch(MSGS, mode)
    assert len(out) <= BATCH_BYTES
    _info(benchmark, "encode-batch", mode, impl, len(MSGS), len(out))
    benchmark.group = f"encode-batch-{mode}"
    benchmark(codec.encode_batch, MSGS, mode)


def test_encode_batch_floor(benchmark):
    dumps = jsonlib.dumps
    msgs = MSGS

    def floor():
        # Serialisation alone.  (Keeping the results in a list, as a decoder must, makes
        # this several times slower with glibc: it is not the cost of the JSON library.)
        for m in msgs:
            dumps(m)

    _info(benchmark, "encode-batch", "any", "floor", len(MSGS), sum(map(len, PAYLOADS)))
    benchmark.group = "encode-batch-floor"
    benchmark(floor)
