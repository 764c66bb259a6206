"""Frame codec test vectors, shared by both codec implementations.

Each vector is fed to a fresh ``Decoder(max_frame, mode)`` (a) whole, (b) one byte at a
time, (c) in seeded random splits and (d) followed by a trailing partial frame, and must
produce exactly ``expect``: decoded dicts, and ``E(code, fatal)`` for FrameErrors.

``run_vector``/``check_vector`` are plain functions (no pytest) so a subprocess can run the
whole table under another JSON backend (see test_codec.py).
"""
import random
import struct
from dataclasses import dataclass, field

from imsrv.protocol import errors


@dataclass(frozen=True)
class E:
    """An expected FrameError."""

    code: str
    fatal: bool = False
    message: str = ""  # substring the message must contain


BAD_JSON = E(errors.BAD_JSON)
TOO_LARGE = E(errors.TOO_LARGE, True)
BAD_FRAME = E(errors.BAD_FRAME, True)


def b(payload):
    """A binary frame around raw payload bytes."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return struct.pack(">I", len(payload)) + payload


def header(n):
    return struct.pack(">I", n)


def padded(size, key="pad"):
    """A compact JSON object of exactly ``size`` bytes, and its value."""
    skeleton = '{"%s":""}' % key
    text = "x" * (size - len(skeleton))
    return ('{"%s":"%s"}' % (key, text)).encode(), {key: text}


@dataclass(frozen=True)
class Vector:
    name: str
    data: bytes
    expect: list
    mode: str = None          # forced mode, None = detect
    max_frame: int = 65536
    detected: str = None      # expected decoder.mode afterwards (default: mode or by first byte)
    tags: tuple = field(default_factory=tuple)


PING = {"op": "ping"}
SEND = {"op": "send", "id": 17, "to": "bob", "cmid": "c-1", "body": {"text": "hi"}}
UNI = {"text": "h\u00e9llo w\u00f6rld \u65e5\u672c\u8a9e \U0001F600\U0001F389 \u0000 \u2028 tab\t"}
UNI_JSON = (
    '{"text":"h\u00e9llo w\u00f6rld \u65e5\u672c\u8a9e \U0001F600\U0001F389 \\u0000 \u2028 tab\\t"}'
).encode("utf-8")
ESCAPED_JSON = b'{"t":"\\u00e9\\u65e5\\ud83d\\ude00\\n\\"\\\\\\/"}'
ESCAPED = {"t": "\u00e9\u65e5\U0001F600\n\"\\/"}

MAX64, MAX64_OBJ = padded(64)
OVER64, _ = padded(65)
MAXDEF, MAXDEF_OBJ = padded(65536)
OVERDEF, _ = padded(65537)

VECTORS = [
    # --- binary: valid ---------------------------------------------------------------
    Vector("binary_single", b(b'{"op":"ping"}'), [PING]),
    Vector("binary_three", b(b'{"op":"ping"}') + b(b'{"op":"send","id":17,"to":"bob","cmid":"c-1","body":{"text":"hi"}}')
           + b(b'{"a":[1,2.5,null,true,false,{"b":{}}]}'),
           [PING, SEND, {"a": [1, 2.5, None, True, False, {"b": {}}]}]),
    Vector("binary_unicode_utf8", b(UNI_JSON), [UNI]),
    Vector("binary_unicode_escapes", b(ESCAPED_JSON), [ESCAPED]),
    Vector("binary_whitespace_inside", b(b' \t{ "a" : 1 }\r\n '), [{"a": 1}]),
    Vector("binary_empty_object", b(b"{}"), [{}]),
    Vector("binary_exact_max_small", b(MAX64), [MAX64_OBJ], max_frame=64),
    Vector("binary_exact_max_default", b(MAXDEF), [MAXDEF_OBJ]),
    Vector("binary_one_byte_max", b(b"{}") , [E("too_large", True, "frame length 2 exceeds max_frame 1")], max_frame=1),
    Vector("binary_forced", b(b'{"op":"ping"}'), [PING], mode="binary"),
    # --- binary: fatal -----------------------------------------------------------------
    Vector("binary_max_plus_one_small", b(OVER64), [E("too_large", True, "frame length 65 exceeds max_frame 64")],
           max_frame=64),
    Vector("binary_max_plus_one_default", b(OVERDEF),
           [E("too_large", True, "frame length 65537 exceeds max_frame 65536")]),
    Vector("binary_header_too_large_no_body", header(70000),
           [E("too_large", True, "frame length 70000 exceeds max_frame 65536")]),
    Vector("binary_header_huge_no_body", b"\xff\xff\xff\xff", [TOO_LARGE]),
    Vector("binary_zero_length", header(0), [E("bad_frame", True, "length 0")]),
    Vector("binary_valid_then_zero_then_valid", b(b'{"op":"ping"}') + header(0) + b(b'{"a":1}'), [PING, BAD_FRAME]),
    Vector("binary_valid_then_too_large", b(b'{"op":"ping"}') + header(65537) + b"{}", [PING, TOO_LARGE]),
    # --- binary: bad_json (non-fatal) ---------------------------------------------------------
    Vector("binary_not_objects", b"".join(b(p) for p in (b"[1,2]", b"42", b'"str"', b"null", b"true", b"1.5"))
           + b(b'{"ok":1}'),
           [E("bad_json", False, "got list"), E("bad_json", False, "got int"), E("bad_json", False, "got str"),
            E("bad_json", False, "got NoneType"), E("bad_json", False, "got bool"), E("bad_json", False, "got float"),
            {"ok": 1}]),
    Vector("binary_invalid_utf8", b(b'{"a":"\xff"}') + b(b'{"a":"\xc3\x28"}') + b(b'{"a":"\xed\xa0\x80"}')
           + b(b'{"a":"\xc0\xaf"}') + b(b'{"ok":2}'),
           [BAD_JSON, BAD_JSON, BAD_JSON, BAD_JSON, {"ok": 2}]),
    Vector("binary_invalid_json_then_valid", b(b'{"a":') + b(b'{"b":1}'), [BAD_JSON, {"b": 1}]),
    Vector("binary_garbage_json", b(b"hello") + b(b"{'a': 1}") + b(b'{"a":1,}') + b(b'{"a":NaN}') + b(b" ")
           + b(b'{"ok":3}'),
           [BAD_JSON, BAD_JSON, BAD_JSON, BAD_JSON, BAD_JSON, {"ok": 3}]),
    Vector("binary_two_objects_in_one_frame", b(b'{"a":1}{"b":2}') + b(b'{"a":1} x'), [BAD_JSON, BAD_JSON]),
    Vector("binary_lone_surrogate_escape", b(b'{"a":"\\ud800"}') + b(b'{"ok":4}'), [BAD_JSON, {"ok": 4}]),
    Vector("binary_deep_nesting", b(b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}") + b(b'{"ok":5}'),
           [BAD_JSON, {"ok": 5}]),
    # --- line: valid -------------------------------------------------------------------
    Vector("line_single", b'{"op":"ping"}\n', [PING], detected="line"),
    Vector("line_three", b'{"op":"ping"}\n{"op":"send","id":17,"to":"bob","cmid":"c-1","body":{"text":"hi"}}\n{"a":[]}\n',
           [PING, SEND, {"a": []}]),
    Vector("line_crlf", b'{"a":1}\r\n{"b":2}\r\n{"c":3}\n', [{"a": 1}, {"b": 2}, {"c": 3}]),
    Vector("line_blank_lines", b'{"a":1}\n\n\r\n\n\r\n{"b":2}\n\n', [{"a": 1}, {"b": 2}]),
    Vector("line_unicode_utf8", UNI_JSON + b"\n", [UNI]),
    Vector("line_unicode_escapes", ESCAPED_JSON + b"\r\n", [ESCAPED]),
    Vector("line_whitespace_around", b'{"a": 1 }  \t\n', [{"a": 1}]),
    Vector("line_forced_leading_blank", b'\n\r\n  {"a":1}\n', [{"a": 1}], mode="line"),
    Vector("line_exact_max_small", MAX64 + b"\n", [MAX64_OBJ], max_frame=64),
    Vector("line_exact_max_small_crlf", MAX64 + b"\r\n" + MAX64 + b"\n", [MAX64_OBJ, MAX64_OBJ], max_frame=64),
    Vector("line_exact_max_default", MAXDEF + b"\r\n", [MAXDEF_OBJ]),
    # --- line: bad_json (non-fatal) ------------------------------------------------------------
    Vector("line_not_objects", b'{"a":1}\n[1,2]\n42\n"s"\nnull\n{"b":2}\n',
           [{"a": 1}, E("bad_json", False, "got list"), E("bad_json", False, "got int"), E("bad_json", False, "got str"),
            E("bad_json", False, "got NoneType"), {"b": 2}]),
    Vector("line_invalid_json_then_valid", b'{"a":\n{"b":1}\n', [BAD_JSON, {"b": 1}]),
    Vector("line_invalid_utf8", b'{"a":"\xff\xfe"}\n{"a":"\xed\xbf\xbf"}\n{"ok":1}\n', [BAD_JSON, BAD_JSON, {"ok": 1}]),
    Vector("line_whitespace_only_line", b'{"a":1}\n \n\t\r\n{"b":2}\n', [{"a": 1}, BAD_JSON, BAD_JSON, {"b": 2}]),
    Vector("line_bare_cr_inside", b'{"a":1}\r\r\n{"b":2}\n', [{"a": 1}, {"b": 2}]),
    # --- line: fatal -------------------------------------------------------------------
    Vector("line_too_long_small", OVER64 + b"\n", [E("too_large", True, "max_frame 64")], max_frame=64),
    Vector("line_too_long_crlf_small", OVER64 + b"\r\n", [TOO_LARGE], max_frame=64),
    Vector("line_too_long_no_newline", b"{" + b"x" * 100, [TOO_LARGE], max_frame=64),
    Vector("line_valid_then_too_long", b'{"a":1}\n' + OVER64 + b'\n{"b":2}\n', [{"a": 1}, TOO_LARGE], max_frame=64),
    Vector("line_valid_then_too_long_no_newline", b'{"a":1}\n' + b"y" * 66, [{"a": 1}, TOO_LARGE], max_frame=64),
    Vector("line_too_long_default", OVERDEF + b"\n", [E("too_large", True, "max_frame 65536")]),
    # --- mode detection ----------------------------------------------------------------
    Vector("detect_space_first_is_binary", b' {"a":1}\n', [TOO_LARGE], detected="binary"),
    Vector("detect_newline_first_is_binary", b'\n{"a":1}\n', [TOO_LARGE], detected="binary"),
    Vector("forced_line_without_brace", b'[1]\n{"a":1}\n', [E("bad_json", False, "got list"), {"a": 1}], mode="line"),
    Vector("forced_binary_brace_header", b'{"a":1}\n', [TOO_LARGE], mode="binary"),
]

BY_NAME = {v.name: v for v in VECTORS}
assert len(BY_NAME) == len(VECTORS), "duplicate vector names"


def expected_mode(vector):
    if vector.detected:
        return vector.detected
    if vector.mode:
        return vector.mode
    return "line" if vector.data[:1] == b"{" else "binary"


def normalise(codec, items):
    """Items -> comparable values; FrameErrors become (code, fatal, message)."""
    out = []
    for item in items:
        if isinstance(item, codec.FrameError):
            out.append(("E", item.code, item.fatal, item.message))
        else:
            assert type(item) is dict, f"item is neither dict nor FrameError: {item!r}"
            out.append(item)
    return out


def matches(expect, got):
    """Compare expected items (dicts / E) with normalised items; return an error string or ''."""
    if len(expect) != len(got):
        return f"expected {len(expect)} items, got {len(got)}: {got!r}"
    for i, (e, g) in enumerate(zip(expect, got)):
        if isinstance(e, E):
            if not (isinstance(g, tuple) and g[0] == "E" and g[1] == e.code and g[2] == e.fatal and e.message in g[3]):
                return f"item {i}: expected {e!r}, got {g!r}"
        elif e != g:
            return f"item {i}: expected {e!r}, got {g!r}"
    return ""


def split_whole(data, rng=None):
    return [data]


def split_bytes(data, rng=None):
    return [data[i:i + 1] for i in range(len(data))]


def split_random(data, rng):
    chunks = []
    i = 0
    while i < len(data):
        # mostly small pieces, sometimes big ones, sometimes empty ones
        n = rng.choice((0, 1, 2, 3, 4, 5, 7, 13, 64, 1000, 70000))
        chunks.append(data[i:i + n])
        i += n
    return chunks


def partial_for(mode):
    """A trailing partial frame for ``mode`` that must stay buffered, not emitted."""
    if mode == "line":
        return b'{"op":"partial","x":'
    return b(b'{"op":"partial"}')[:-3]


def feed_all(codec, vector, chunks, as_type=bytes):
    dec = codec.Decoder(max_frame=vector.max_frame, mode=vector.mode)
    items = []
    for chunk in chunks:
        got = dec.feed(as_type(chunk))
        assert isinstance(got, list)
        items.extend(got)
    return dec, items


def check_decoder_state(codec, vector, dec, items, trailing=b""):
    """Invariants after feeding a vector (+ optional trailing partial frame)."""
    assert dec.mode == expected_mode(vector), (dec.mode, expected_mode(vector))
    fatal = [i for i, item in enumerate(items) if isinstance(item, codec.FrameError) and item.fatal]
    assert fatal in ([], [len(items) - 1]), f"a fatal error must be the last item: {items!r}"
    if fatal:
        assert dec.failed
        assert dec.buffered == 0
        assert dec.feed(b(b'{"a":1}') + b'{"a":1}\n') == []
    else:
        assert not dec.failed
        assert dec.buffered == len(trailing), (dec.buffered, len(trailing))


def run_vector(codec, vector, how, seed=0, as_type=bytes):
    """Feed one vector one way; raise AssertionError on any mismatch."""
    rng = random.Random(seed)
    data = vector.data
    trailing = b""
    if how == "trailing":
        trailing = partial_for(expected_mode(vector))
        chunks = split_random(data + trailing, rng)
    elif how == "whole":
        chunks = split_whole(data)
    elif how == "bytewise":
        chunks = split_bytes(data)
    elif how == "random":
        chunks = split_random(data, rng)
    else:
        raise ValueError(how)
    dec, items = feed_all(codec, vector, chunks, as_type)
    problem = matches(vector.expect, normalise(codec, items))
    assert not problem, f"{vector.name} ({how}, seed {seed}): {problem}"
    fatal = bool(items) and isinstance(items[-1], codec.FrameError) and items[-1].fatal
    check_decoder_state(codec, vector, dec, items, b"" if fatal else trailing)
    return items


HOWS = ("whole", "bytewise", "random", "trailing")
SEEDS = (1, 2, 3, 4, 5)


def check_all(codec):
    """Run the whole table every way (for the subprocess runs); returns the count of runs."""
    runs = 0
    for vector in VECTORS:
        for how in HOWS:
            for seed in (SEEDS if how in ("random", "trailing") else (0,)):
                run_vector(codec, vector, how, seed)
                runs += 1
    return runs
