"""imsrv: an instant-messaging server (protocol v1, see docs/PROTOCOL.md)."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
