"""imsrv.bench.mqtt (the MQTT 3.1.1 codec of ``imsrv bench --peer mosquitto``) and one short
run of imsrv.bench.peer_mosquitto against a private broker.

The codec tests do no I/O: every packet is encoded, split by the Decoder (whole, byte by
byte, and glued to its neighbours) and parsed back, with remaining lengths on both sides of
each varint boundary (127/128, 16383/16384, 2097151/2097152).  The broker test needs
/usr/sbin/mosquitto (Debian package ``mosquitto``) and paho-mqtt (the test extra), and
fails, not skips, without them.
"""
import pytest

from imsrv.bench import mqtt
from imsrv.bench.peer_mosquitto import Peer

BOUNDARIES = [0, 1, 127, 128, 16383, 16384, 2097151, 2097152, mqtt.MAX_REMAINING]


@pytest.mark.parametrize("n", BOUNDARIES)
def test_remaining_length_round_trip(n):
    encoded = mqtt.encode_remaining_length(n)
    assert len(encoded) == 1 + (n > 127) + (n > 16383) + (n > 2097151)
    assert mqtt.decode_remaining_length(encoded + b"tail") == (n, len(encoded))
    assert mqtt.decode_remaining_length(encoded[:-1]) is None  # incomplete


def test_remaining_length_limits():
    for bad in (-1, mqtt.MAX_REMAINING + 1):
        with pytest.raises(ValueError):
            mqtt.encode_remaining_length(bad)
    with pytest.raises(mqtt.ProtocolError):
        mqtt.decode_remaining_length(b"\xff\xff\xff\xff\x01")
    with pytest.raises(mqtt.ProtocolError):
        mqtt.Decoder().feed(b"\x30\xff\xff\xff\xff\x01")


def publish_with_remaining(n, qos=1, topic="u/t"):
    """A PUBLISH whose remaining length is exactly ``n``."""
    overhead = 2 + len(topic) + (2 if qos else 0)
    packet = mqtt.encode_publish(topic, b"p" * (n - overhead), qos, 7 if qos else 0)
    return packet, n - overhead


def split_all(data, decoder=None):
    """Packets of ``data`` fed whole, byte by byte, and in 1000-byte pieces: all the same."""
    whole = (decoder or mqtt.Decoder()).feed(data)
    for step in (1, 1000):
        dec, pieces = mqtt.Decoder(), []
        for i in range(0, len(data), step):
            pieces += dec.feed(data[i:i + step])
        assert pieces == whole and dec.buf == b""
    return whole


@pytest.mark.parametrize("n", [9, 127, 128, 16383, 16384, 2097152])
@pytest.mark.parametrize("qos", [0, 1])
def test_publish_round_trip_at_boundaries(n, qos):
    packet, payload_len = publish_with_remaining(n, qos)
    assert len(packet) == 1 + len(mqtt.encode_remaining_length(n)) + n
    # large packets byte by byte would be slow: feed those whole, and glued to a PUBACK
    packets = (mqtt.Decoder().feed(packet + mqtt.encode_puback(9)) if n > 20000
               else split_all(packet + mqtt.encode_puback(9)))
    (ptype, flags, body), ack = packets
    assert (ptype, flags) == (mqtt.PUBLISH, qos << 1)
    assert mqtt.parse_publish(flags, body) == (b"u/t", 7 if qos else 0, b"p" * payload_len)
    assert ack[0] == mqtt.PUBACK and mqtt.parse_puback(ack[2]) == 9


def test_publish_flags():
    packet = mqtt.encode_publish(b"a/b", b"x", qos=1, packet_id=65535, dup=True, retain=True)
    [(ptype, flags, body)] = mqtt.Decoder().feed(packet)
    assert (ptype, flags) == (mqtt.PUBLISH, 0x08 | 0x02 | 0x01)
    assert mqtt.parse_publish(flags, body) == (b"a/b", 65535, b"x")


def test_control_packets_round_trip():
    stream = b"".join([
        mqtt.encode_connect("client-é", keepalive=30, clean=True),
        mqtt.encode_connack(session_present=True, code=5),
        mqtt.encode_subscribe(42, [("u/1", 1), ("u/+/x", 0)]),
        mqtt.encode_suback(42, [1, 0x80]),
        mqtt.encode_puback(1),
        mqtt.PINGREQ_PACKET, mqtt.PINGRESP_PACKET, mqtt.DISCONNECT_PACKET,
    ])
    packets = split_all(stream)
    assert [(t, f) for t, f, _ in packets] == [
        (mqtt.CONNECT, 0), (mqtt.CONNACK, 0), (mqtt.SUBSCRIBE, 2), (mqtt.SUBACK, 0),
        (mqtt.PUBACK, 0), (mqtt.PINGREQ, 0), (mqtt.PINGRESP, 0), (mqtt.DISCONNECT, 0)]
    bodies = [body for _, _, body in packets]
    assert mqtt.parse_connect(bodies[0]) == {"protocol": "MQTT", "level": 4, "clean": True,
                                             "keepalive": 30, "client_id": "client-é"}
    assert mqtt.parse_connack(bodies[1]) == (True, 5)
    assert mqtt.parse_subscribe(bodies[2]) == (42, [("u/1", 1), ("u/+/x", 0)])
    assert mqtt.parse_suback(bodies[3]) == (42, [1, 0x80])
    assert mqtt.parse_puback(bodies[4]) == 1
    assert bodies[5:] == [b"", b"", b""]


def test_decoder_keeps_partial_packets_and_limits_size():
    packet = mqtt.encode_publish("t", b"x" * 300, 1, 3)
    dec = mqtt.Decoder()
    assert dec.feed(packet[:1]) == [] and dec.feed(packet[1:2]) == []  # half a length varint
    assert dec.feed(packet[2:-1]) == []
    assert len(dec.feed(packet[-1:] + packet[:5])) == 1 and dec.buf == packet[:5]
    with pytest.raises(mqtt.ProtocolError, match="over the limit"):
        mqtt.Decoder(max_size=100).feed(packet)


@pytest.mark.parametrize("client", ["raw", "paho"])
def test_peer_runs_pairs_against_a_private_broker(tmp_path, client):
    """Peer.start / run_pairs / stop with each client (paho-mqtt is in the test extra), a
    window smaller than the batch, two workers."""
    peer = Peer(str(tmp_path), client=client)
    peer.start()
    try:
        assert peer.port and peer.port != 1883
        seen = []
        result = peer.run_pairs(pairs=2, messages=50, batch=10, window=7, size=32, workers=2,
                                progress=lambda totals, elapsed: seen.append(totals), timeout=60)
    finally:
        peer.stop()
    assert peer.proc is None
    assert result["errors"] == 0, result["problems"]
    assert result["sent"] == result["acked"] == result["delivered"] == 100
    assert result["seconds"] > 0 and result["delivered_per_s"] > 0
    assert 0 <= result["latency_ms"]["p50"] <= result["latency_ms"]["max"]
    assert all(set(t) == {"acked", "delivered"} for t in seen)
    assert (tmp_path / "mosquitto.conf").read_text().count("persistence false") == 1
