"""imsrv client SDK (placeholder docstring, replaced below)."""
from .client import Client, Event, SendHandle
from .errors import (ClientClosed, ClientError, ConnectionLost, Kicked, NotConnected, ServerError,
                     Timeout)
from .store import MemoryStore, SQLiteStore, open_store

__all__ = ["Client", "Event", "SendHandle", "ClientError", "ServerError", "ConnectionLost", "Timeout",
           "NotConnected", "Kicked", "ClientClosed", "MemoryStore", "SQLiteStore", "open_store"]
