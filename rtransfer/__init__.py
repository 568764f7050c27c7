"""rtransfer: chunked, integrity-checked file transfer over TCP."""

__version__ = "1.1.0"
