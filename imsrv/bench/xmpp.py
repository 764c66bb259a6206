"""A minimal XMPP client on gevent sockets, for ``imsrv bench --peer ejabberd``.

Why not a library: the bench has to drive ejabberd to its limit from a few Python
processes on the same two cores.  slixmpp, the maintained Python XMPP library, is built on
asyncio (it does not run on gevent's hub without a second event loop per worker), builds
a full stanza object with plugin dispatch for every message and writes each stanza with
its own ``send()``; the workers would be the bottleneck, not the server.  This module
does only what the bench needs, the way the imsrv load generator talks to imsrv:
pipelined, many stanzas per socket write, the stanzas of each read parsed in one go by
expat (the C parser of the standard library, fed incrementally).

What it covers (RFC 6120, RFC 6121 section 4-5, XEP-0077, XEP-0198):

- :class:`StreamParser`: an incremental parser of an XMPP stream into its top-level
  elements (:class:`Element`: tag ``"namespace local"``, attrs, children, text);
- :class:`Client`: one connection: ``connect`` (stream open, features), ``register``
  (XEP-0077 in-band registration on the unauthenticated stream), ``login`` (SASL PLAIN,
  stream restart, resource bind, session when the server requires it), ``enable_sm``
  (XEP-0198 ``<enable/>``, ``<enabled/>`` awaited), ``sync`` (an iq round trip: all
  stanzas written before it have been processed), ``write`` (raw XML, serialised by a
  lock), ``elements()`` (what arrives, a list per read), ``close``.

Not covered: TLS (the bench's private server runs plain c2s on loopback), SCRAM and other
SASL mechanisms, stream resumption, compression.
"""
import base64
import itertools
from xml.parsers import expat

import gevent
import gevent.lock
from gevent import socket

#: bytes asked of each socket read
READ_SIZE = 256 * 1024

NS_STREAM = "http://etherx.jabber.org/streams"
NS_CLIENT = "jabber:client"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_REGISTER = "jabber:iq:register"
NS_SM = "urn:xmpp:sm:3"

#: tags as the parser names them ("namespace local")
FEATURES = f"{NS_STREAM} features"
STREAM_ERROR = f"{NS_STREAM} error"
MESSAGE = f"{NS_CLIENT} message"
PRESENCE = f"{NS_CLIENT} presence"
IQ = f"{NS_CLIENT} iq"
BODY = f"{NS_CLIENT} body"
SM_A = f"{NS_SM} a"
SM_R = f"{NS_SM} r"

#: XEP-0198: ask for an ack (<r/>), and the answer to the server's
SM_REQUEST = b"<r xmlns='urn:xmpp:sm:3'/>"
SM_ACK = "<a xmlns='urn:xmpp:sm:3' h='%d'/>"


class ProtocolError(ValueError):
    """Malformed XML, a stream error, a refused step, or the server closed the stream."""


class Element:
    """One parsed element: ``tag`` ("namespace local"), ``attrs``, ``children``, ``text``."""
    __slots__ = ("tag", "attrs", "children", "text")

    def __init__(self, tag, attrs):
        self.tag, self.attrs, self.children, self.text = tag, attrs, [], ""

    def find(self, tag):
        """The first child with this tag, or None."""
        for child in self.children:
            if child.tag == tag:
                return child
        return None

    def local(self):
        return self.tag.rpartition(" ")[2]

    def __repr__(self):
        inner = "".join(f"<{c.local()}/>" for c in self.children)
        return f"<{self.local()} {self.attrs}>{inner}{self.text[:40]}</{self.local()}>"


class StreamParser:
    """Incremental: ``feed(bytes)`` -> the top-level elements (children of the stream
    root) completed by these bytes.  ``stream_attrs`` holds the root's attributes once
    its start tag has arrived; ``closed`` turns True at ``</stream:stream>``."""

    def __init__(self):
        p = expat.ParserCreate(namespace_separator=" ")
        p.buffer_text = True
        p.buffer_size = READ_SIZE
        p.StartElementHandler = self._start
        p.EndElementHandler = self._end
        p.CharacterDataHandler = self._text
        self._parser = p
        self._stack = []
        self._out = []
        self.stream_attrs = None
        self.closed = False

    def _start(self, tag, attrs):
        if self.stream_attrs is None:
            self.stream_attrs = attrs
            return
        el = Element(tag, attrs)
        if self._stack:
            self._stack[-1].children.append(el)
        self._stack.append(el)

    def _end(self, tag):
        if not self._stack:
            self.closed = True
            return
        el = self._stack.pop()
        if not self._stack:
            self._out.append(el)

    def _text(self, data):
        if self._stack:
            self._stack[-1].text += data

    def feed(self, data):
        try:
            self._parser.Parse(data, False)
        except expat.ExpatError as exc:
            raise ProtocolError(f"malformed XML from the server: {exc}") from None
        out, self._out = self._out, []
        return out


def escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("'", "&apos;")


class Client:
    """One XMPP client connection to ``host:port`` for the domain ``domain`` (the module
    docstring lists what it does).  Setup steps wait at most ``timeout`` seconds each."""

    def __init__(self, host, port, domain, timeout=10.0):
        self.domain = domain
        self.timeout = timeout
        self.jid = None
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._lock = gevent.lock.Semaphore()
        self._parser = None
        self._pending = []
        self._ids = itertools.count(1)
        self.features = None

    # ------------------------------------------------------------------ I/O

    def write(self, data):
        """Send raw XML (bytes or str) in one ``sendall``, never interleaved with another."""
        if isinstance(data, str):
            data = data.encode()
        with self._lock:
            self.sock.sendall(data)

    def _read(self):
        data = self.sock.recv(READ_SIZE)
        if not data:
            raise ProtocolError("the server closed the connection")
        out = self._parser.feed(data)
        for el in out:
            if el.tag == STREAM_ERROR:
                raise ProtocolError(f"stream error: {[c.local() for c in el.children]}")
        if self._parser.closed:
            raise ProtocolError("the server closed the stream")
        return out

    def _next(self, what, accept):
        """The first element for which ``accept(el)`` holds (others before it are kept for
        ``elements()``), within ``timeout`` seconds."""
        with gevent.Timeout(self.timeout, ProtocolError(f"no {what} within {self.timeout:.0f} s")):
            while True:
                for i, el in enumerate(self._pending):
                    if accept(el):
                        del self._pending[i]
                        return el
                self._pending += self._read()

    def elements(self):
        """Yield the elements of each read as a list until the server closes the
        connection (then return) or sends a stream error (:class:`ProtocolError`)."""
        if self._pending:
            pending, self._pending = self._pending, []
            yield pending
        while True:
            try:
                data = self.sock.recv(READ_SIZE)
            except OSError:
                return
            if not data:
                return
            out = self._parser.feed(data)
            if out:
                yield out
            if self._parser.closed:
                return

    def _iq(self, what, iq_type, payload, strict=True):
        """Send an iq, wait for its answer -> the answer (a ProtocolError on an error
        answer when ``strict``)."""
        iq_id = f"b{next(self._ids)}"
        self.write(f"<iq type='{iq_type}' id='{iq_id}'>{payload}</iq>")
        el = self._next(f"answer to {what}", lambda e: e.tag == IQ and e.attrs.get("id") == iq_id)
        if strict and el.attrs.get("type") != "result":
            raise ProtocolError(f"{what} refused: {_error_condition(el)}")
        return el

    # ------------------------------------------------------------------ setup

    def _open_stream(self):
        self._parser = StreamParser()
        self._pending = []
        self.write(f"<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' "
                   f"xmlns:stream='{NS_STREAM}' to='{escape(self.domain)}' version='1.0'>")
        self.features = self._next("stream features", lambda e: e.tag == FEATURES)

    def connect(self):
        """Open the stream and read its features."""
        self._open_stream()
        return self

    def register(self, user, password):
        """XEP-0077 in-band registration on the unauthenticated stream -> True when the
        account was created, False when it existed (conflict)."""
        try:
            self._iq(f"registration of {user}", "set",
                     f"<query xmlns='{NS_REGISTER}'><username>{escape(user)}</username>"
                     f"<password>{escape(password)}</password></query>")
        except ProtocolError as exc:
            if "conflict" in str(exc):
                return False
            raise
        return True

    def login(self, user, password, resource="bench"):
        """SASL PLAIN, stream restart, resource bind, session if required -> the bound JID."""
        mechanisms = self.features.find(f"{NS_SASL} mechanisms")
        offered = [m.text for m in mechanisms.children] if mechanisms is not None else []
        if "PLAIN" not in offered:
            raise ProtocolError(f"the server offers no SASL PLAIN (offered: {offered})")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.write(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
        el = self._next("SASL answer", lambda e: e.tag.startswith(NS_SASL + " "))
        if el.local() != "success":
            raise ProtocolError(f"SASL PLAIN for {user}: {el.local()} "
                                f"{[c.local() for c in el.children]} {el.text}".rstrip())
        self._open_stream()
        bound = self._iq("resource bind", "set",
                         f"<bind xmlns='{NS_BIND}'><resource>{escape(resource)}</resource></bind>")
        bind = bound.find(f"{NS_BIND} bind")
        jid = bind.find(f"{NS_BIND} jid") if bind is not None else None
        self.jid = jid.text if jid is not None else None
        session = self.features.find(f"{NS_SESSION} session")
        if session is not None and session.find(f"{NS_SESSION} optional") is None:
            self._iq("session", "set", f"<session xmlns='{NS_SESSION}'/>")
        return self.jid

    def enable_sm(self):
        """XEP-0198: enable stream management (no resumption); from now on the server
        counts the stanzas it handles and answers ``<r/>`` with ``<a h='count'/>``."""
        if self.features.find(f"{NS_SM} sm") is None:
            raise ProtocolError("the server does not offer stream management (mod_stream_mgmt off?)")
        self.write(f"<enable xmlns='{NS_SM}'/>")
        el = self._next("answer to <enable/>", lambda e: e.tag in (f"{NS_SM} enabled", f"{NS_SM} failed"))
        if el.local() != "enabled":
            raise ProtocolError(f"stream management refused: {[c.local() for c in el.children]}")

    def sync(self, what="sync"):
        """An iq round trip to the server (a disco#info get; an error answer will do):
        everything written before it has been processed once it returns.  (It counts in
        the server's XEP-0198 count when SM is on: call it before ``enable_sm``.)"""
        self._iq(what, "get", "<query xmlns='http://jabber.org/protocol/disco#info'/>", strict=False)

    def close(self):
        """Close the stream (best effort) and the socket."""
        try:
            self.sock.sendall(b"</stream:stream>")
        except OSError:
            pass
        self.sock.close()


def _error_condition(el):
    err = el.find(f"{NS_CLIENT} error")
    if err is None:
        return f"type {el.attrs.get('type')!r}"
    return ", ".join(c.local() for c in err.children) or "error"
