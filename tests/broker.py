"""The real-mosquitto harness for tests (lives in facelite.tools.localbroker so `make demo` uses the same one)."""

from facelite.tools.localbroker import (
    MOSQUITTO,
    MOSQUITTO_PASSWD,
    MosquittoBroker,
    Received,
    Subscriber,
    TlsFiles,
    free_port,
    make_tls_files,
)

__all__ = [
    "MOSQUITTO",
    "MOSQUITTO_PASSWD",
    "MosquittoBroker",
    "Received",
    "Subscriber",
    "TlsFiles",
    "free_port",
    "make_tls_files",
]
