"""The bundled OCPP 1.6J central system (for `make run` and the end-to-end tests)."""

from chargepoint.csms.server import (
    CallErrorResponse,
    CentralSystem,
    ConnectionInfo,
    FrameRecord,
    Received,
    TransactionRecord,
    Violation,
    make_server_ssl_context,
)

__all__ = [
    "CallErrorResponse",
    "CentralSystem",
    "ConnectionInfo",
    "FrameRecord",
    "Received",
    "TransactionRecord",
    "Violation",
    "make_server_ssl_context",
]
