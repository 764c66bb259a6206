"""What `search` matches and the index tokens that find it (imsrv/core/search_text.py), and
the background indexer's bookkeeping (imsrv/core/search.py SearchIndexer) against a fake
store: no sockets, no database."""
import json
import random

import pytest

from imsrv.core import search_text as st
from imsrv.core.search import SearchIndexer


def match(q, text):
    query = st.query_terms(q)
    assert query is not None, q
    return st.matches(query, text)


# ============================================================================ the text
@pytest.mark.parametrize("body, text", [
    ({"text": "hi"}, "hi"),
    ({"text": "hi", "x": 1}, "hi"),
    ({"text": 5}, None),
    ({"other": "hi"}, None),
    ("plain", "plain"),
    (["hi"], None),
    (42, None),
    (None, None),
])
def test_message_text(body, text):
    assert st.message_text(body) == text
    assert st.message_text_json(json.dumps(body)) == text


def test_message_text_of_unreadable_json_is_none():
    assert st.message_text_json("{not json") is None
    assert st.message_text_json(None) is None


# ============================================================================ the rule
@pytest.mark.parametrize("q, text, expected", [
    ("hello", "Hello, World!", True),
    ("WORLD hello", "Hello, World!", True),        # every word, any order, any case
    ("hello moon", "Hello, World!", False),        # every word is needed
    ("wor", "Hello, World!", False),               # whole words
    ("world!", "Hello, World!", True),             # punctuation is no part of a word
    ("e-mail", "send an e mail", True),            # words: runs of letters and digits
    ("foo_bar", "foo bar", True),                  # "_" separates words too
    ("v2", "release v2.1", True),
    ("STRASSE", "die Straße", True),               # casefold: ß -> ss
    ("cafe", "café", False),                       # accents count
    ("Ünïcödé", "ünïcödé text", True),
    ("天气", "今天天气很好", True),                  # CJK: substring
    ("气很", "今天天气很好", True),
    ("好", "今天天气很好", True),
    ("天好", "今天天气很好", False),                 # not adjacent
    ("天气 好", "今天天气很好", True),
    ("hello 世界", "say hello to 世界", True),
    ("hello世界", "say hello 世界", True),           # a word and a CJK run
    ("世界", "世 界", False),                        # runs are cut by other characters
    ("カタカナ", "これはカタカナです", True),          # kana
    ("안녕", "안녕하세요", True),                     # Hangul
])
def test_rule(q, text, expected):
    assert match(q, text) is expected


def test_rule_on_no_text():
    assert st.matches(st.query_terms("x"), None) is False


@pytest.mark.parametrize("q", ["!", "?!  ...", "   ", "__", "-"])
def test_query_without_words_is_refused(q):
    assert st.query_terms(q) is None


# ============================================================================ the tokens
def test_tokens_are_ascii_of_one_length():
    doc = st.index_doc("Hello 世界 and ünïcödé", "u:alice:bob")
    tokens = doc.split()
    assert all(len(t) == st.TOKEN_CHARS and t.isascii() and t.isalnum() and t.islower() for t in tokens)
    assert st.conv_token("u:alice:bob") in tokens
    assert st.participant_token("alice") in tokens and st.participant_token("bob") in tokens
    group_doc = st.index_doc("hi", "g:grp1").split()
    assert st.conv_token("g:grp1") in group_doc
    assert not any(t.startswith("p") for t in group_doc)
    assert st.index_doc(None, "g:x") is None
    assert st.index_doc("?!", "g:x") is None


def test_every_match_has_every_token_of_the_query():
    """The index never misses a message that matches: whatever query matches a text, the
    text's document holds every token the query asks for."""
    rng = random.Random(5)
    alphabet = "abcde 天气很好今 ABC,."
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        words, runs = st.split(text)
        pieces = list(words) + [r[i:j] for r in runs for i in range(len(r)) for j in range(i + 1, len(r) + 1)]
        if not pieces:
            continue
        q = " ".join(rng.sample(pieces, min(len(pieces), rng.randint(1, 3))))
        query = st.query_terms(q)
        assert st.matches(query, text), (q, text)
        doc = set(st.index_doc(text, "g:x").split())
        assert set(st.query_tokens(query)) <= doc, (q, text)


# ============================================================================ the indexer
class FakeStore:
    """The indexer's side of the Store: messages by mid, documents, position."""

    def __init__(self):
        self.messages = {}
        self.docs = {}
        self.position = 0
        self.applied = 0

    def add(self, mid, text=None, conv="u:a:b", kind=None, ref=None, body=None):
        if body is None:
            body = json.dumps({"text": text})
        self.messages[mid] = {"mid": mid, "conv": conv, "kind": kind, "ref": ref, "body": body,
                              "edited_body": None, "recalled": 0}

    def search_position(self):
        return self.position

    def search_sources(self, after=None, limit=None, mids=None):
        if mids is None:
            return [dict(self.messages[m]) for m in sorted(self.messages) if m > after][:limit]
        return [dict(self.messages[m]) for m in sorted(set(mids)) if m in self.messages]

    def search_apply(self, docs, drop, position):
        self.docs.update(docs)
        for mid in drop:
            self.docs.pop(mid, None)
        self.position = position
        self.applied += 1


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def words_of(doc):
    return set(doc.split())


def test_indexer_indexes_searchable_messages_only():
    s = FakeStore()
    s.add(1, "hello")
    s.add(2, body=json.dumps({"no": "text"}))
    s.add(3, "gone")
    s.messages[3]["recalled"] = 5
    s.add(4, body="null", kind="reaction", ref=1)
    s.add(5, "edited", kind="edit", ref=1)          # an edit entry: its own body is not indexed
    ix = SearchIndexer(s, batch=10)
    assert ix.step() == 5
    assert sorted(s.docs) == [1]
    assert s.position == 5 and ix.step() == 0
    applied = s.applied
    assert ix.step() == 0 and s.applied == applied    # nothing new: nothing written


def test_indexer_follows_edits_and_recalls():
    s = FakeStore()
    s.add(1, "first words")
    s.add(2, "keep me")
    ix = SearchIndexer(s, batch=10)
    ix.step()
    assert st.word_token("first") in words_of(s.docs[1])
    s.messages[1]["edited_body"] = json.dumps({"text": "second words"})
    s.add(3, "second words", kind="edit", ref=1)
    s.messages[2]["recalled"] = 9
    s.add(4, body="null", kind="recall", ref=2)
    ix.step()
    assert st.word_token("second") in words_of(s.docs[1])
    assert st.word_token("first") not in words_of(s.docs[1])
    assert 2 not in s.docs
    # an edit to a body without text drops the document
    s.messages[1]["edited_body"] = "42"
    s.add(5, body="42", kind="edit", ref=1)
    ix.step()
    assert s.docs == {}


def test_indexer_holes_are_looked_for_again_then_given_up():
    s = FakeStore()
    clock = Clock()
    s.add(1, "a")
    s.add(3, "c")              # 2 is not committed yet (another forwarder's batch)
    s.add(4, "d")
    ix = SearchIndexer(s, batch=10, hole_ttl=60, clock=clock)
    ix.step()
    assert sorted(s.docs) == [1, 3, 4]
    assert ix.holes == {2: 100.0} and s.position == 1    # stored: below the hole
    s.add(2, "b")              # it commits
    clock.now += 1
    ix.step()
    assert sorted(s.docs) == [1, 2, 3, 4] and ix.holes == {} and s.position == 4
    s.add(6, "f")              # 5 never comes (its batch rolled back)
    ix.step()
    assert ix.holes == {5: 101.0} and s.position == 4
    clock.now += 61
    ix.step()
    assert ix.holes == {} and s.position == 6
    # a restarted indexer starts from the stored position
    assert SearchIndexer(s).step() == 0


def test_indexer_restart_below_a_hole_indexes_again_idempotently():
    s = FakeStore()
    s.add(1, "a")
    s.add(3, "c")
    SearchIndexer(s, batch=10).step()
    assert s.position == 1
    s.add(2, "b")
    ix = SearchIndexer(s, batch=10)       # a new process: no holes in memory
    assert ix.step() == 2
    assert sorted(s.docs) == [1, 2, 3] and s.position == 3


def test_indexer_batches_and_long_gaps():
    s = FakeStore()
    for mid in range(1, 8):
        s.add(mid, f"m{mid}")
    s.add(20000, "far")        # a gap longer than any in-flight batch: not holes
    ix = SearchIndexer(s, batch=3)
    assert [ix.step() for _ in range(4)] == [3, 3, 2, 0]
    assert ix.holes == {} and s.position == 20000 and len(s.docs) == 8
