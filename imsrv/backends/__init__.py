"""Storage backends, chosen by URL.

Durable store URLs (:func:`open_store`):

- ``sqlite:///var/imsrv.db``: a file, relative to the working directory (three slashes,
  then the path);
- ``sqlite:////var/lib/imsrv/imsrv.db``: an absolute path (four slashes);
- ``sqlite:///:memory:``: a private in-memory database (tests);
- ``mysql://user:password@host:3306/dbname``: MySQL or MariaDB via PyMySQL (distributed
  deployment; options such as ``?pool_size=8`` in :mod:`imsrv.backends.mysql`; create the
  database with :func:`imsrv.backends.mysql.initdb`).

The store returned is not migrated: call ``store.migrate()`` once at startup.
"""
from .base import DuplicateKey, Store, StoreError

__all__ = ["open_store", "Store", "StoreError", "DuplicateKey"]


def _redact(url):
    """The URL with any password replaced, for error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = userinfo.split(":", 1)[0] + ":***@" + host
    return f"{scheme}{sep}{netloc}{slash}{path}"


def open_store(url, **options):
    """Open the durable store named by ``url`` -> a :class:`Store`.

    ``options`` go to the engine; for SQLite: ``synchronous`` (default "FULL"),
    ``busy_timeout`` (milliseconds, default 5000), ``wal_autocheckpoint`` (pages, default
    10000), ``writer_thread`` (default: when gevent
    has patched the process, i.e. in a server: writes and their fsync off the event-loop
    thread, see :mod:`imsrv.backends.sqlite`).  Raises ValueError for a URL that names no
    known engine or no database."""
    if not isinstance(url, str):
        raise ValueError(f"store URL must be a string, not {url!r}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme == "sqlite":
        if not rest.startswith("/") or len(rest) < 2:
            raise ValueError(f"bad SQLite store URL {url!r}: expected sqlite:///relative/path.db,"
                             " sqlite:////absolute/path.db or sqlite:///:memory:")
        from .sqlite import SqliteStore
        return SqliteStore(rest[1:], url=url, **options)
    if sep and scheme in ("mysql", "mysql+pymysql"):
        from .mysql import MysqlStore
        return MysqlStore(url, **options)
    raise ValueError(f"unknown store URL {_redact(url)!r}: expected sqlite:///path.db"
                     " or mysql://user:password@host/dbname")
