"""URLs and settings of the MySQL / MariaDB store (:mod:`imsrv.backends.mysql`).

URL: ``mysql://user:password@host:port/dbname?option=value&...`` (``mysql+pymysql://`` is
accepted too).  The port defaults to 3306, the user to root, the password may be omitted;
user, password and database name are percent-decoded (write ``@`` in a password as
``%40``).  ``store.url`` is the URL without its password (:func:`redact`).  Settings come
from the URL query or from keyword arguments of ``MysqlStore`` / ``open_store`` (keyword
arguments win):

- ``pool_size`` (default 8): most connections the store holds open at once.  Connections
  are opened when needed and kept for reuse.
- ``pool_timeout`` (default 10 s): how long a call waits for a free connection when all
  ``pool_size`` are busy before failing with StoreError.
- ``connect_timeout`` (default 5 s), ``read_timeout`` and ``write_timeout`` (default 30 s):
  socket timeouts, so a stopped or unreachable server fails a call (StoreError) instead of
  hanging it.  ``read_timeout`` bounds the wait for any one reply.
- ``lock_wait_timeout`` (default 10 s): the session's ``innodb_lock_wait_timeout``.
- ``retries`` (default 4): how many times a transaction that hit a deadlock (1213) or a
  lock wait timeout (1205) is run again before the error becomes StoreError.
- ``charset`` (default and only value: ``utf8mb4``).
- ``unix_socket`` (default none): connect through this socket instead of host:port.
"""
import re
from urllib.parse import parse_qsl, unquote, urlsplit

DEFAULT_PORT = 3306
SETTINGS = {
    # name: (default, type)
    "pool_size": (8, int),
    "pool_timeout": (10.0, float),
    "connect_timeout": (5.0, float),
    "read_timeout": (30.0, float),
    "write_timeout": (30.0, float),
    "lock_wait_timeout": (10, int),
    "retries": (4, int),
    "charset": ("utf8mb4", str),
    "unix_socket": (None, str),
}
# a database name goes into DDL backquoted, so it may only hold these characters
DB_NAME_RE = re.compile(r"^[A-Za-z0-9_$-]{1,64}$")


def parse_url(url, require_db=True):
    """``mysql://user:pw@host:port/db?opt=v`` -> dict(host, port, user, password,
    database, options).  Raises ValueError (the message never shows the password)."""
    if not isinstance(url, str):
        raise ValueError(f"MySQL store URL must be a string, not {url!r}")
    parts = urlsplit(url)
    shown = redact(url)
    if parts.scheme.lower() not in ("mysql", "mysql+pymysql"):
        raise ValueError(f"not a MySQL URL: {shown!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"bad port in MySQL URL {shown!r}") from None
    host = parts.hostname or ""
    database = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not host:
        raise ValueError(f"MySQL URL {shown!r} names no host:"
                         " expected mysql://user:password@host:3306/dbname")
    if database and not DB_NAME_RE.fullmatch(database):
        raise ValueError(f"MySQL URL {shown!r}: database name must be 1-64 of"
                         " A-Z a-z 0-9 _ $ -")
    if require_db and not database:
        raise ValueError(f"MySQL URL {shown!r} names no database:"
                         " expected mysql://user:password@host:3306/dbname")
    options = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in SETTINGS:
            raise ValueError(f"MySQL URL {shown!r}: unknown option {key!r}"
                             f" (known: {', '.join(sorted(SETTINGS))})")
        options[key] = value
    return {"host": host, "port": port,
            "user": unquote(parts.username) if parts.username is not None else "root",
            "password": unquote(parts.password) if parts.password is not None else "",
            "database": database, "options": options}


def redact(url):
    """The URL without its password (for messages and ``store.url``)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return parts._replace(netloc=f"{user}:***@{netloc}").geturl()
    except ValueError:
        return "mysql://<unparseable URL>"


def resolve_settings(url_options, kwargs):
    """The store's settings: ``kwargs`` (consumed) over the URL's ``url_options`` over
    the defaults, converted and checked.  ValueError / TypeError for a bad one."""
    out = {}
    for name, (default, kind) in SETTINGS.items():
        value = kwargs.pop(name, url_options.get(name, default))
        if value is not None and not isinstance(value, kind):
            try:
                value = kind(value)
            except (TypeError, ValueError):
                raise ValueError(f"MySQL store option {name}: not a valid {kind.__name__}:"
                                 f" {value!r}") from None
        out[name] = value
    if kwargs:
        raise TypeError(f"unknown MySQL store option(s): {', '.join(sorted(kwargs))}")
    if out["charset"].lower() != "utf8mb4":
        raise ValueError(f"MySQL store option charset: only utf8mb4 is supported"
                         f" (4-byte characters must survive), not {out['charset']!r}")
    if out["pool_size"] < 1:
        raise ValueError(f"MySQL store option pool_size must be >= 1, not {out['pool_size']}")
    for name in ("pool_timeout", "connect_timeout", "read_timeout", "write_timeout"):
        if out[name] <= 0:
            raise ValueError(f"MySQL store option {name} must be > 0, not {out[name]}")
    if out["lock_wait_timeout"] < 1 or out["retries"] < 0:
        raise ValueError("MySQL store options: lock_wait_timeout must be >= 1 and"
                         " retries >= 0")
    return out
