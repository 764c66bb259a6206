"""The web chat page served by the WebSocket port (``GET /``, its assets, ``POST /api``)."""
