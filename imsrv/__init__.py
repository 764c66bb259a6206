"""imsrv: an instant-messaging server (protocol v1.1, see docs/PROTOCOL.md)."""

__version__ = "0.1.0"
