"""OCPP-J 1.6 RPC frames (OCPP-J §4): parse one websocket text frame, encode replies.

Pure: no asyncio, no clock, no I/O. `parse()` turns text into a `Call`, `CallResult`
or `CallError`, or raises `FrameError` carrying the OCPP-J error code to answer with.

Error-code choices (OCPP-J §4.2.3, Table 7; errata 5.1/5.2 keep the wire spellings):
- not JSON, wrong wrapper element types, too many elements, payload not an object:
  FormationViolation ("syntactically incorrect or not conform the PDU structure").
- too few elements: ProtocolError ("Payload for Action is incomplete").
- message id longer than 36 characters (§4.1.4, Table 3): FormationViolation; §4.2.3
  names "unique identifier too long" as a reason for a CALLERROR, and the id is part
  of the RPC wrapper (the PDU structure), not of the action's payload.
- unknown message type number: §4.1.3 says the receiver SHALL ignore the message,
  so the error is never answered (`FrameError.answerable` is False).
A CALLERROR is only ever sent in answer to a CALL whose message id could be read;
a malformed CALLRESULT/CALLERROR is never answered (that would invite error loops).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final


class MessageType(IntEnum):
    """OCPP-J §4.1.3, Table 2."""

    CALL = 2
    CALLRESULT = 3
    CALLERROR = 4


# OCPP-J §4.2.3, Table 7. Wire spellings are kept as published (errata 5.1, 5.2):
# "OccurenceConstraintViolation" has one "r" and "FormationViolation" is not renamed.
NOT_IMPLEMENTED: Final = "NotImplemented"
NOT_SUPPORTED: Final = "NotSupported"
INTERNAL_ERROR: Final = "InternalError"
PROTOCOL_ERROR: Final = "ProtocolError"
SECURITY_ERROR: Final = "SecurityError"
FORMATION_VIOLATION: Final = "FormationViolation"
PROPERTY_CONSTRAINT_VIOLATION: Final = "PropertyConstraintViolation"
OCCURENCE_CONSTRAINT_VIOLATION: Final = "OccurenceConstraintViolation"
TYPE_CONSTRAINT_VIOLATION: Final = "TypeConstraintViolation"
GENERIC_ERROR: Final = "GenericError"

ERROR_CODES: Final = frozenset(
    {
        NOT_IMPLEMENTED,
        NOT_SUPPORTED,
        INTERNAL_ERROR,
        PROTOCOL_ERROR,
        SECURITY_ERROR,
        FORMATION_VIOLATION,
        PROPERTY_CONSTRAINT_VIOLATION,
        OCCURENCE_CONSTRAINT_VIOLATION,
        TYPE_CONSTRAINT_VIOLATION,
        GENERIC_ERROR,
    }
)

# OCPP-J §4.1.4 Table 3 (and errata 3.7): at most 36 characters, room for a UUID.
MESSAGE_ID_MAX_LEN: Final = 36


@dataclass(frozen=True, slots=True)
class Call:
    message_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallResult:
    message_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallError:
    message_id: str
    error_code: str
    error_description: str
    error_details: dict[str, Any] = field(default_factory=dict)


Frame = Call | CallResult | CallError


class FrameError(Exception):
    """An inbound frame that breaks the RPC framework rules.

    `message_id` is the id when it could be read (a string; a too-long one is still
    reported so that it can be echoed), `message_type` the message type number when
    it was 2, 3 or 4. Only an `answerable` error (a CALL with a readable id) may be
    answered with a CALLERROR; anything else must be dropped and logged.
    """

    def __init__(
        self,
        error_code: str,
        description: str,
        message_id: str | None = None,
        message_type: int | None = None,
    ) -> None:
        super().__init__(f"{error_code}: {description}")
        self.error_code = error_code
        self.description = description
        self.message_id = message_id
        self.message_type = message_type

    @property
    def answerable(self) -> bool:
        return self.message_id is not None and self.message_type == MessageType.CALL


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN/Infinity by default; they are not JSON (RFC 8259 §6).
    raise ValueError(f"{name} is not valid JSON")


_decode = json.JSONDecoder(parse_constant=_reject_constant).decode
# Compact and UTF-8 as-is (OCPP-J §4.1.2); NaN/Infinity would not be JSON, so refuse them.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse(text: str | bytes) -> Frame:
    """Parse one websocket message into a frame; raises FrameError (see module doc)."""
    if isinstance(text, bytes | bytearray):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(FORMATION_VIOLATION, "frame is not UTF-8 (OCPP-J 4.1.2)") from None
    try:
        msg = _decode(text)
    except ValueError:  # JSONDecodeError is a ValueError, as is _reject_constant's
        raise FrameError(FORMATION_VIOLATION, "frame is not valid JSON") from None
    except RecursionError:
        # A hostile frame nested deeper than the decoder can follow ("[[[[..."): no PDU
        # is nested that deep, and its id cannot be read, so it is dropped like bad JSON.
        raise FrameError(FORMATION_VIOLATION, "frame is nested too deeply to be an OCPP-J message") from None
    if type(msg) is not list:
        raise FrameError(FORMATION_VIOLATION, "frame is not a JSON array")
    n = len(msg)
    if n == 0:
        raise FrameError(PROTOCOL_ERROR, "frame is an empty array")
    message_type = msg[0]
    message_id: str | None = msg[1] if n > 1 and type(msg[1]) is str else None
    if type(message_type) is not int or message_type not in (2, 3, 4):
        # OCPP-J 4.1.3: a message type number not in the table SHALL be ignored.
        raise FrameError(FORMATION_VIOLATION, f"unknown message type {_short(message_type)}", message_id)
    if message_id is None:
        if n < 2:
            raise FrameError(PROTOCOL_ERROR, "frame has no message id", None, message_type)
        raise FrameError(FORMATION_VIOLATION, "message id is not a string", None, message_type)
    if len(message_id) > MESSAGE_ID_MAX_LEN:
        raise FrameError(
            FORMATION_VIOLATION,
            f"message id longer than {MESSAGE_ID_MAX_LEN} characters (OCPP-J 4.1.4)",
            message_id,
            message_type,
        )

    if message_type == 2:
        # [2, "<UniqueId>", "<Action>", {<Payload>}] (OCPP-J 4.2.1)
        if n != 4:
            code = PROTOCOL_ERROR if n < 4 else FORMATION_VIOLATION
            raise FrameError(code, f"CALL has {n} elements, expected 4", message_id, 2)
        action = msg[2]
        if type(action) is not str:
            raise FrameError(FORMATION_VIOLATION, "action is not a string", message_id, 2)
        return Call(message_id, action, _payload(msg[3], message_id, 2))

    if message_type == 3:
        # [3, "<UniqueId>", {<Payload>}] (OCPP-J 4.2.2)
        if n != 3:
            code = PROTOCOL_ERROR if n < 3 else FORMATION_VIOLATION
            raise FrameError(code, f"CALLRESULT has {n} elements, expected 3", message_id, 3)
        return CallResult(message_id, _payload(msg[2], message_id, 3))

    # [4, "<UniqueId>", "<errorCode>", "<errorDescription>", {<errorDetails>}] (OCPP-J 4.2.3).
    # Lenient on a missing or null description/details: a CALLERROR is never answered,
    # and failing the pending call with the peer's error code is more useful than dropping it.
    if n < 3 or n > 5:
        code = PROTOCOL_ERROR if n < 3 else FORMATION_VIOLATION
        raise FrameError(code, f"CALLERROR has {n} elements, expected 5", message_id, 4)
    error_code = msg[2]
    description = msg[3] if n > 3 else ""
    details = msg[4] if n > 4 else None
    if type(error_code) is not str:
        raise FrameError(FORMATION_VIOLATION, "CALLERROR errorCode is not a string", message_id, 4)
    if description is None:
        description = ""
    elif type(description) is not str:
        raise FrameError(FORMATION_VIOLATION, "CALLERROR errorDescription is not a string", message_id, 4)
    if details is None:
        details = {}
    elif type(details) is not dict:
        raise FrameError(FORMATION_VIOLATION, "CALLERROR errorDetails is not an object", message_id, 4)
    return CallError(message_id, error_code, description, details)


def _payload(value: object, message_id: str, message_type: int) -> dict[str, Any]:
    if type(value) is dict:
        return value
    if value is None:
        # OCPP-J 4.2.1/4.2.2 Tables 4/5: an empty payload may be written null or {}.
        return {}
    raise FrameError(FORMATION_VIOLATION, "payload is not a JSON object", message_id, message_type)


def encode_call(message_id: str, action: str, payload: dict[str, Any]) -> str:
    """Raises ValueError/TypeError if the payload is not JSON (e.g. NaN, a datetime)."""
    return _encode([2, message_id, action, payload])


def encode_result(message_id: str, payload: dict[str, Any]) -> str:
    return _encode([3, message_id, payload])


def encode_error(
    message_id: str, error_code: str, error_description: str = "", error_details: dict[str, Any] | None = None
) -> str:
    # OCPP-J 4.2.3 Table 6: details MUST be an object; {} when there are none.
    return _encode([4, message_id, error_code, error_description, error_details or {}])


def encode(frame: Frame) -> str:
    if isinstance(frame, Call):
        return encode_call(frame.message_id, frame.action, frame.payload)
    if isinstance(frame, CallResult):
        return encode_result(frame.message_id, frame.payload)
    return encode_error(frame.message_id, frame.error_code, frame.error_description, frame.error_details)


def new_message_id() -> str:
    """A fresh CALL id: a random UUID (36 characters), unique across reconnects and
    restarts without any persisted counter (OCPP-J errata 3.1/3.7)."""
    return str(uuid.uuid4())
