"""`imsrv serve` (the embedded server) on a MySQL/MariaDB database URL works, and works
cooperatively: the `imsrv` command monkey-patches gevent for every server command
(imsrv/runtime.py), so PyMySQL's sockets are gevent's and a query that waits (here a
send waiting ~1.5 s for a row lock this test holds) lets every other connection be
answered meanwhile.

The database is one of this test's own on the test MariaDB (tests/services.py: the local
server or a private throwaway one), created empty, migrated by the server at start, and
dropped at the end.
"""
import time

import pytest

import services

from harness.users import befriend, new_user

pytestmark = pytest.mark.timeout(90)

HOLD = 1.5          # seconds this test holds the row lock (the store's lock wait: 10 s)
PING_BOUND = 0.2    # seconds: a ping answered later than this was stalled


@pytest.fixture
def mysql_database():
    server = services.need(services.ensure_mysql, "a MySQL/MariaDB server")
    name = services.random_name()
    services.mysql_create_database(server, name)
    yield f"{server}/{name}", name
    services.mysql_drop_database(server, name)


def test_embedded_serve_on_a_mysql_url(server_factory, mysql_database):
    url, database = mysql_database
    srv = server_factory(config={"server": {"database_url": url}}, name="serve_mysql")
    ready = [ln for ln in srv.log_text().splitlines() if " event=ready " in ln]
    assert ready and f"store={url}" in ready[0], ready
    a, b, c = new_user(srv, "ma"), new_user(srv, "mb"), new_user(srv, "mc")
    befriend(a, b)
    with a.connect() as ga, b.connect() as gb, c.connect() as gc:
        first = ga.send_msg("hello over mysql", to=b.name, cmid="m-0")
        assert gb.wait_push("msg", mid=first["mid"])["body"] == "hello over mysql"

        # b's seq counter row locked by another connection: the server's send waits for it
        holder = services.mysql_connect(url)
        try:
            with holder.cursor() as cur:
                cur.execute(f"USE `{database}`")
                cur.execute("START TRANSACTION")
                cur.execute("SELECT last_seq FROM user_seq WHERE user = %s FOR UPDATE", (b.name,))
                assert cur.fetchone() is not None
                locked_at = time.monotonic()
                rid = ga.send_request("send", to=b.name, body="during", cmid="m-1")
                pings = gc.ping_times(until=locked_at + HOLD)   # about 20 over the hold
                released_at = time.monotonic()
                cur.execute("ROLLBACK")
        finally:
            holder.close()
        ack = ga.read_reply(rid, timeout=15)
        acked_at = time.monotonic()
        assert ack["op"] == "ack", ack
        assert acked_at >= released_at                 # it really waited for the lock
        assert len(pings) >= 10 and max(pings) < PING_BOUND, pings
        assert gb.wait_push("msg", mid=ack["mid"])["body"] == "during"

        msgs, head = gb.sync_all()
        assert [m["seq"] for m in msgs] == list(range(1, head + 1))
        assert [m["body"] for m in msgs if m["from"] == a.name] == ["hello over mysql", "during"]
    # the API reads the same store: history, newest first
    history = a.call("history", **{"with": b.name})
    assert [m["body"] for m in history["msgs"]] == ["during", "hello over mysql"]
