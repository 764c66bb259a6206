"""The WSGI application of the WebSocket port's plain HTTP requests (everything but /ws).

``make_app(cfg, api_address, relay_key)`` -> a WSGI callable (run by gevent.pywsgi in the WebSocket
port, imsrv/servers/web_port.py) that serves:

- ``GET``/``HEAD`` of the web chat page: ``/`` (index.html) and its assets, the files of
  imsrv/web/static/ (imsrv/web/static.py), each with its Content-Type, an ``ETag`` and
  ``Cache-Control: no-cache`` (the browser revalidates, a ``304`` when unchanged: a new
  server version is never hidden behind a stale cache; :func:`etag_matches` decides,
  RFC 9110 section 13.1.2).  Another method on a page path:
  ``405`` with ``Allow: GET, HEAD``.
- ``POST /api``: one API request relayed to the API service at ``api_address``
  (imsrv/web/relay.py, which lists the status codes), with the browser's address and
  ``relay_key`` (imsrv/web/relay_key.py) so that the API throttles per browser.  Another method: ``405`` with
  ``Allow: POST``.
- anything else: ``404`` (plain text, one line).

Every response (the ``304`` too) carries ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
no-referrer`` and a Content-Security-Policy: only this server's own scripts, styles and
images; network connections only to this server (``'self'``) and its WebSocket (``ws:``
and ``wss:`` of the request's host); no framing by other sites.
"""
import re

from .. import jsonlib, logs
from . import static
from .relay import ApiRelay

API_PATH = "/api"

_REASONS = {200: "OK", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 411: "Length Required", 413: "Content Too Large",
            415: "Unsupported Media Type", 429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            504: "Gateway Timeout"}

# A Host header goes into the CSP only when it is a plain host[:port] (never a header injection).
_HOST_OK = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")

# One entity tag of an If-None-Match list: its quoted part (a comma inside quotes is the tag's).
_ENTITY_TAG = re.compile(r'(?:W/)?("[^"]*")')

COMMON_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
]


def content_security_policy(host):
    """The CSP of every response; ``host`` is the request's Host header (host[:port])."""
    connect = "'self'"
    if host and _HOST_OK.match(host):
        connect += f" ws://{host} wss://{host}"
    return ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src {connect}; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")


def etag_matches(if_none_match, etag):
    """True when the If-None-Match header value ``if_none_match`` names ``etag`` (a quoted
    entity tag): ``*``, or one of its entity tags (a comma-separated list; each
    ``"..."`` or ``W/"..."``) equal to ``etag`` in the weak comparison of RFC 9110
    section 8.8.3.2 (a ``W/`` prefix ignored on either side, the quoted tags compared
    exactly: never a substring).  An empty or absent header matches nothing."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    want = etag[2:] if etag.startswith("W/") else etag
    return want in _ENTITY_TAG.findall(if_none_match)


def _status(code):
    return f"{code} {_REASONS.get(code, '')}".rstrip()


def make_app(cfg, api_address, relay_key=None):
    """-> a WSGI callable serving the page; ``api_address`` is the (host, port) of the API
    service that ``POST /api`` relays to, ``relay_key`` the key that service believes the
    browser's address from (None: it sees the relay's; see the module docstring)."""
    files = static.load()
    relay = ApiRelay(cfg, api_address, relay_key)

    def security_headers(environ):
        return COMMON_HEADERS + [("Content-Security-Policy", content_security_policy(environ.get("HTTP_HOST", "")))]

    def respond(environ, start_response, code, body, ctype, extra=()):
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body)))]
        headers += list(extra) + security_headers(environ)
        start_response(_status(code), headers)
        return [b""] if environ["REQUEST_METHOD"] == "HEAD" else [body]

    def text(environ, start_response, code, message, extra=()):
        return respond(environ, start_response, code, (message + "\n").encode("utf-8"),
                       "text/plain; charset=utf-8", extra)

    def api(environ, start_response):
        if environ["REQUEST_METHOD"] != "POST":
            return text(environ, start_response, 405,
                        f"method {environ['REQUEST_METHOD']} not allowed on {API_PATH}: POST one JSON "
                        "object (an API request, docs/PROTOCOL.md)", [("Allow", "POST")])
        code, reply, headers = relay.relay(environ)
        return respond(environ, start_response, code, jsonlib.dumps(reply), "application/json",
                       [("Cache-Control", "no-store")] + headers)

    def page(environ, start_response, f):
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            return text(environ, start_response, 405,
                        f"method {environ['REQUEST_METHOD']} not allowed on {f.path}", [("Allow", "GET, HEAD")])
        cache = [("Cache-Control", "no-cache"), ("ETag", f.etag)]
        if etag_matches(environ.get("HTTP_IF_NONE_MATCH"), f.etag):
            start_response(_status(304), cache + security_headers(environ))
            return [b""]
        return respond(environ, start_response, 200, f.body, f.content_type, cache)

    def app(environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        try:
            if path == API_PATH:
                return api(environ, start_response)
            f = files.get(path)
            if f is None:
                return text(environ, start_response, 404, f"not found: {path[:200]}")
            return page(environ, start_response, f)
        except Exception as exc:   # a bug: logged with its traceback, answered 500
            logs.exception("internal_error", exc, service="web", path=path[:200],
                           method=environ.get("REQUEST_METHOD"), addr=environ.get("REMOTE_ADDR", "?"))
            return text(environ, start_response, 500, "internal error (logged by the server)")

    return app
