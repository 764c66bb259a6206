"""One short run of imsrv.bench.peer_ejabberd (``imsrv bench pairs --peer ejabberd``)
against a private ejabberd, and the XMPP stream parser it uses.

The run needs ejabberd (Debian package ``ejabberd``: /usr/sbin/ejabberdctl and Erlang's
/usr/bin/erl; ``make system-packages`` installs it) and fails, not skips, without it.  It
starts a private node in a temp dir (a second or two), runs 2 pairs x 50 messages and
checks that the node is gone after ``stop()``.
"""
import os

import pytest

from imsrv.bench import xmpp
from imsrv.bench.peer_ejabberd import EJABBERDCTL, ERL, Peer


def test_stream_parser_splits_top_level_elements_across_reads():
    data = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            b"xmlns:stream='http://etherx.jabber.org/streams' id='s1' version='1.0'>"
            b"<message type='chat' from='a@h/r'><body>12:xx &amp; y</body></message>"
            b"<a xmlns='urn:xmpp:sm:3' h='7'/></stream:stream>")
    for step in (1, 7, len(data)):
        parser, out = xmpp.StreamParser(), []
        for i in range(0, len(data), step):
            out += parser.feed(data[i:i + step])
        assert parser.stream_attrs["id"] == "s1" and parser.closed
        message, ack = out
        assert message.tag == xmpp.MESSAGE and message.attrs["type"] == "chat"
        assert message.find(xmpp.BODY).text == "12:xx & y"
        assert ack.tag == xmpp.SM_A and ack.attrs["h"] == "7"


def test_stream_parser_rejects_malformed_xml():
    parser = xmpp.StreamParser()
    parser.feed(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>")
    with pytest.raises(xmpp.ProtocolError):
        parser.feed(b"<message></body>")


def test_pairs_against_a_private_ejabberd(tmp_path):
    missing = [p for p in (EJABBERDCTL, ERL) if not os.access(p, os.X_OK)]
    assert not missing, (f"{' and '.join(missing)} missing: install the Debian package ejabberd "
                         f"(`make system-packages` does, or `apt-get install ejabberd`)")
    peer = Peer(str(tmp_path))
    peer.start()
    try:
        pid = peer.proc.pid
        result = peer.run_pairs(pairs=2, messages=50, batch=5, window=20, size=50, workers=1,
                                progress=None, timeout=60)
    finally:
        peer.stop()
    assert result["errors"] == 0, result["problems"]
    assert result["sent"] == result["acked"] == result["delivered"] == 100, result
    assert result["seconds"] > 0 and result["delivered_per_s"] > 0
    assert 0 <= result["latency_ms"]["p50"] <= result["latency_ms"]["max"]
    assert not os.path.exists(f"/proc/{pid}"), "the private ejabberd still runs after stop()"
