"""What `search` matches, and the index tokens that find it (sans-IO, no store).

**The text of a message** (:func:`message_text`): ``body.text`` when the body is an object
with a string ``text``, else the body when it is a string, else none (nothing to find).

**The rule** (:func:`matches`).  Text and query are case-folded (``str.casefold``) and cut
into *words* (maximal runs of letters and digits, ``_`` and CJK characters excluded) and
*CJK runs* (maximal runs of CJK characters: Han, kana, Hangul, Bopomofo; see ``_CJK``).
A text matches a query when every word of the query is one of the words of the text and
every CJK run of the query is a substring of a CJK run of the text.  So "Hello, World!"
matches ``world hello`` but not ``wor`` (words are whole words); "今天天气很好" matches
``天气`` and ``气很`` (CJK text: a substring match).  A query without a word or a CJK
character (``"?!"``) matches nothing: :func:`query_terms` refuses it (bad_request).

**The index** (:func:`index_doc`, :func:`query_tokens`).  A message is indexed as one
*document*: a space-separated set of short ASCII tokens, each a type letter and 10
base-32 digits of a 50-bit BLAKE2b hash (``w``: a word, or a CJK character or pair of
adjacent CJK characters; ``c``: the conversation key; ``p``: each participant of a 1:1
conversation).  Every word of the text gives its token; every CJK run gives the tokens of
its characters and of its overlapping pairs.  A query needs the token of each of its
words, of each lone CJK character and of each adjacent pair of its CJK runs, so every
message that matches has every token the query asks for: the index never misses one.  It
may find a few that do not match (a hash collision; the pairs of a CJK run found apart),
which is why the candidates are checked against the rule itself.  Hashed tokens are of
one length, made of characters every full-text engine treats as a word (SQLite FTS5's
ascii tokenizer, InnoDB's FULLTEXT parser: 11 characters, above its minimum token size and
never one of its stopwords), and keep the index free of the text itself.
"""
import hashlib
import re

from .. import jsonlib

# CJK: Hangul Jamo, CJK radicals, 々〆〇, kana, Bopomofo, Hangul compatibility Jamo, Bopomofo
# extended, katakana extensions, CJK extension A, unified ideographs, Hangul Jamo extended
# A, Hangul syllables, Jamo extended B, compatibility ideographs, half-width katakana, and
# the supplementary ideographic planes (extensions B to H)
_CJK = ("\u1100-\u11ff\u2e80-\u2fdf\u3005-\u3007\u3040-\u30ff\u3100-\u312f\u3130-\u318f"
        "\u31a0-\u31bf\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7af"
        "\ud7b0-\ud7ff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003ffff")
_TOKENS = re.compile(f"([{_CJK}]+)|([^\\W_{_CJK}]+)")

TOKEN_CHARS = 11                 # a type letter and 10 base-32 digits
_B32 = "0123456789abcdefghijklmnopqrstuv"
_cache = {}                      # type letter + string -> its token (words repeat a lot)
_CACHE_MAX = 200_000


def message_text(body):
    """The searchable text of a decoded message body, or None."""
    if isinstance(body, dict):
        text = body.get("text")
        return text if isinstance(text, str) else None
    return body if isinstance(body, str) else None


def message_text_json(body_json):
    """message_text of a body stored as JSON text (None: unreadable or no text)."""
    if body_json is None:
        return None
    try:
        return message_text(jsonlib.loads(body_json))
    except ValueError:
        return None


def split(text):
    """-> (set of words, list of CJK runs) of ``text``, case-folded."""
    words, runs = set(), []
    for cjk, word in _TOKENS.findall(text.casefold()):
        if cjk:
            runs.append(cjk)
        else:
            words.add(word)
    return words, runs


class Query:
    """A parsed `q`: its words (a set) and CJK runs (a list), case-folded."""

    __slots__ = ("words", "runs")

    def __init__(self, words, runs):
        self.words = words
        self.runs = runs


def query_terms(q):
    """-> Query of ``q``, or None when it has no word and no CJK character."""
    words, runs = split(q)
    if not words and not runs:
        return None
    return Query(words, list(dict.fromkeys(runs)))


def matches(query, text):
    """The rule: every word of the query is a word of ``text`` and every CJK run of the
    query is a substring of a CJK run of ``text``.  ``text`` None never matches."""
    if text is None:
        return False
    words, runs = split(text)
    if not query.words <= words:
        return False
    return all(any(r in run for run in runs) for r in query.runs)


# ------------------------------------------------------------------------------ tokens
def _digits(s):
    n = int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "big") >> 14
    return "".join(_B32[(n >> shift) & 31] for shift in range(45, -5, -5))


def _cached(prefix, s):
    key = prefix + s
    t = _cache.get(key)
    if t is None:
        t = prefix + _digits(s)
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[key] = t
    return t


def word_token(s):
    """The token of a word, a CJK character or a pair of CJK characters."""
    return _cached("w", s)


def conv_token(conv):
    """The token of a conversation key."""
    return _cached("c", conv)


def participant_token(user):
    """The token a 1:1 message carries for each of its two users."""
    return _cached("p", user)


def _conv_part(conv):
    """The tokens of a document that come from its conversation, as one string."""
    key = "\0" + conv
    part = _cache.get(key)
    if part is None:
        tokens = [conv_token(conv)]
        if conv.startswith("u:"):
            _, a, b = conv.split(":", 2)
            tokens.extend(dict.fromkeys((participant_token(a), participant_token(b))))
        part = _cache[key] = " ".join(tokens)
    return part


def index_doc(text, conv):
    """The document of a message with ``text`` in conversation ``conv`` (None: the message
    has nothing to find): its tokens, space-separated, in no particular order."""
    if text is None:
        return None
    words, runs = split(text)
    if not words and not runs:
        return None
    for run in runs:
        words.update(run)
        words.update(run[i:i + 2] for i in range(len(run) - 1))
    cache = _cache
    parts = [cache.get("w" + g) or word_token(g) for g in words]
    parts.append(_conv_part(conv))
    return " ".join(parts)


def query_tokens(query):
    """The word tokens a document must all hold to be a candidate for ``query``."""
    grams = set(query.words)
    for run in query.runs:
        if len(run) == 1:
            grams.add(run)
        else:
            grams.update(run[i:i + 2] for i in range(len(run) - 1))
    return sorted(word_token(g) for g in grams)
