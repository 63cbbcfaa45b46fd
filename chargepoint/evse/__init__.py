"""EVSE logic: IEC 61851 pilot mapping (iec61851), the OCPP connector status
machine (status) and the connector controller that applies them to the HAL
(controller). iec61851 and status are pure: no asyncio, no clock."""

from .iec61851 import Inputs, Outputs, decide, duty_percent_for_current, offered_current_a
from .status import ChargePointErrorCode, ChargePointStatus, StatusReport, StatusReporter, derive

__all__ = [
    "ChargePointErrorCode", "ChargePointStatus", "Inputs", "Outputs", "StatusReport", "StatusReporter",
    "decide", "derive", "duty_percent_for_current", "offered_current_a",
]
