"""Pure strictness checks of the bundled central system: frames, schemas, timestamps.

Deliberately independent of `chargepoint.ocppj` (the charger's own frame and schema
code): the central system is the referee in the end-to-end tests, and a bug shared
by both sides would cancel out. No asyncio, no clock: "now" and the plausibility
floor are passed in.

Schemas are the official OCPP 1.6 JSON schemas shipped inside the `ocpp` package
(read as files; the package itself is not imported). They already carry the OCPP-J
errata 2019/2025 fixes (StopTransaction `reason` optional, both Celsius spellings,
BootNotification.conf `interval` integer). Validators are Draft 4 objects (OCPP-J
errata 3.8), built once per schema and reused.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema import Draft4Validator

MAX_MESSAGE_ID_LEN = 36  # OCPP-J 4.1.4

CALL, CALLRESULT, CALLERROR = 2, 3, 4

# OCPP-J 4.2.3 table 7, in the wire spelling (OCPP-J errata 5.1 and 5.2: the typos
# "Occurence" and "Formation" stay on the wire).
ERROR_CODES = frozenset({
    "NotImplemented", "NotSupported", "InternalError", "ProtocolError", "SecurityError",
    "FormationViolation", "PropertyConstraintViolation", "OccurenceConstraintViolation",
    "TypeConstraintViolation", "GenericError",
})

# Requests a charge point sends (OCPP 1.6 ch. 4, plus the security whitepaper's
# additions for 1.6).
CP_TO_CS_ACTIONS = frozenset({
    "Authorize", "BootNotification", "DataTransfer", "DiagnosticsStatusNotification",
    "FirmwareStatusNotification", "Heartbeat", "MeterValues", "StartTransaction",
    "StatusNotification", "StopTransaction",
    "LogStatusNotification", "SecurityEventNotification", "SignCertificate",
    "SignedFirmwareStatusNotification",
})

# Requests only a central system sends (OCPP 1.6 ch. 5, security whitepaper).
CS_TO_CP_ACTIONS = frozenset({
    "CancelReservation", "ChangeAvailability", "ChangeConfiguration", "ClearCache",
    "ClearChargingProfile", "DataTransfer", "GetCompositeSchedule", "GetConfiguration",
    "GetDiagnostics", "GetLocalListVersion", "RemoteStartTransaction", "RemoteStopTransaction",
    "ReserveNow", "Reset", "SendLocalList", "SetChargingProfile", "TriggerMessage",
    "UnlockConnector", "UpdateFirmware",
    "CertificateSigned", "DeleteCertificate", "ExtendedTriggerMessage", "GetInstalledCertificateIds",
    "GetLog", "InstallCertificate", "SignedUpdateFirmware",
})


class FrameProblem(Exception):
    """A frame that breaks OCPP-J 4: `code` is the CALLERROR code to answer with.

    `message_id` is set when the frame is a CALL whose id could still be read, so the
    receiver can answer it; `None` when no answer is possible.
    """

    def __init__(self, code: str, description: str, message_id: str | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.message_id = message_id


@dataclass(frozen=True)
class Call:
    message_id: str
    action: str
    payload: dict[str, Any]
    null_payload: bool = False  # OCPP-J 4.2.1: null is legal JSON but {} is the good practice


@dataclass(frozen=True)
class CallResult:
    message_id: str
    payload: dict[str, Any]
    null_payload: bool = False


@dataclass(frozen=True)
class CallError:
    message_id: str
    code: str
    description: str
    details: dict[str, Any]


Frame = Call | CallResult | CallError


def parse_frame(text: str) -> Frame:
    """Parse one OCPP-J text frame strictly (OCPP-J 4.1-4.2); raise FrameProblem."""
    try:
        msg = json.loads(text)
    except ValueError as exc:
        raise FrameProblem("FormationViolation", f"not valid JSON: {exc}") from None
    if not isinstance(msg, list) or not msg:
        raise FrameProblem("FormationViolation", "a frame must be a non-empty JSON array")
    kind = msg[0]
    if type(kind) is not int or kind not in (CALL, CALLRESULT, CALLERROR):
        raise FrameProblem("FormationViolation", f"unknown MessageTypeId {kind!r}")
    mid = msg[1] if len(msg) > 1 else None
    if not isinstance(mid, str):
        raise FrameProblem("FormationViolation", f"UniqueId must be a string, got {mid!r}")
    answerable = mid if kind == CALL else None
    if not mid or len(mid) > MAX_MESSAGE_ID_LEN:
        raise FrameProblem("FormationViolation",
                           f"UniqueId must have 1 to {MAX_MESSAGE_ID_LEN} characters, got {len(mid)}",
                           answerable)
    expected_len = {CALL: 4, CALLRESULT: 3, CALLERROR: 5}[kind]
    if len(msg) != expected_len:
        raise FrameProblem("FormationViolation",
                           f"MessageTypeId {kind} needs {expected_len} elements, got {len(msg)}", answerable)
    if kind == CALL:
        action, payload = msg[2], msg[3]
        if not isinstance(action, str) or not action:
            raise FrameProblem("FormationViolation", f"Action must be a non-empty string, got {action!r}", mid)
        if payload is None:
            return Call(mid, action, {}, null_payload=True)
        if not isinstance(payload, dict):
            raise FrameProblem("FormationViolation", "Payload must be a JSON object", mid)
        return Call(mid, action, payload)
    if kind == CALLRESULT:
        payload = msg[2]
        if payload is None:
            return CallResult(mid, {}, null_payload=True)
        if not isinstance(payload, dict):
            raise FrameProblem("FormationViolation", "CALLRESULT payload must be a JSON object")
        return CallResult(mid, payload)
    code, description, details = msg[2], msg[3], msg[4]
    if not isinstance(code, str) or code not in ERROR_CODES:
        raise FrameProblem("FormationViolation", f"errorCode {code!r} is not in OCPP-J table 7")
    if not isinstance(description, str):
        raise FrameProblem("FormationViolation", "errorDescription must be a string")
    if not isinstance(details, dict):
        raise FrameProblem("FormationViolation", "errorDetails must be a JSON object ({} when empty)")
    return CallError(mid, code, description, details)


# --- schema validation ---------------------------------------------------------

# RFC 3339 date-time (what JSON schema "format": "date-time" means): the offset is
# mandatory. A timestamp without one is a classic charger bug.
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def parse_rfc3339(text: str) -> dt.datetime | None:
    """An aware datetime for a valid RFC 3339 date-time string, else None."""
    m = _RFC3339.match(text)
    if m is None:
        return None
    try:
        year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
        frac = m.group(7)
        micro = int((frac[1:] + "000000")[:6]) if frac else 0
        tz_text = m.group(8)
        if tz_text in ("Z", "z"):
            tz = dt.UTC
        else:
            sign = 1 if tz_text[0] == "+" else -1
            tz = dt.timezone(sign * dt.timedelta(hours=int(tz_text[1:3]), minutes=int(tz_text[4:6])))
        # RFC 3339 allows second 60 (leap second); datetime does not: clamp.
        return dt.datetime(year, month, day, hour, minute, min(second, 59), micro, tzinfo=tz)
    except ValueError:
        return None


def _schema_dir() -> Path:
    spec = importlib.util.find_spec("ocpp")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the ocpp package (official OCPP 1.6 schemas) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "v16" / "schemas"


@functools.cache
def _format_checker() -> Any:
    from jsonschema import FormatChecker

    checker = FormatChecker(formats=())

    @checker.checks("date-time")
    def _is_datetime(instance: object) -> bool:
        return not isinstance(instance, str) or parse_rfc3339(instance) is not None

    return checker


@dataclass(frozen=True)
class _Compiled:
    validator: Draft4Validator
    decimal: bool  # schema uses multipleOf: validate on Decimal numbers (floats break 0.1 steps)
    datetime_paths: tuple[tuple[str, ...], ...]


def _datetime_paths(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of every date-time field; "*" stands for any array index."""
    if schema.get("format") == "date-time":
        return [prefix]
    paths: list[tuple[str, ...]] = []
    for name, sub in schema.get("properties", {}).items():
        paths += _datetime_paths(sub, (*prefix, name))
    if isinstance(schema.get("items"), dict):
        paths += _datetime_paths(schema["items"], (*prefix, "*"))
    return paths


@functools.cache
def _compiled(schema_name: str) -> _Compiled | None:
    from jsonschema import Draft4Validator

    path = _schema_dir() / f"{schema_name}.json"
    if not path.exists():
        return None
    text = path.read_text(encoding="utf-8")
    decimal = "multipleOf" in text
    schema = json.loads(text, parse_float=Decimal) if decimal else json.loads(text)
    return _Compiled(Draft4Validator(schema, format_checker=_format_checker()), decimal,
                     tuple(_datetime_paths(schema)))


def has_schema(action: str) -> bool:
    return _compiled(action) is not None


# Which CALLERROR a schema failure earns (OCPP-J 4.2.3 table 7), most basic first:
# the first listed code that applies is the answer.
_CODE_BY_KEYWORD = {
    "additionalProperties": "FormationViolation",   # not conform the PDU structure
    "required": "OccurenceConstraintViolation",     # a 1..1 field occurs 0 times
    "minItems": "OccurenceConstraintViolation",
    "maxItems": "OccurenceConstraintViolation",
    "type": "TypeConstraintViolation",              # e.g. "somestring": 12
    "format": "TypeConstraintViolation",            # dateTime is a data type
    "maxLength": "TypeConstraintViolation",         # CiString20Type etc.: the length is the type
    "enum": "PropertyConstraintViolation",          # valid type, invalid value
}
_CODE_ORDER = ("FormationViolation", "OccurenceConstraintViolation", "TypeConstraintViolation",
               "PropertyConstraintViolation")


@dataclass(frozen=True)
class SchemaProblem:
    code: str          # the CALLERROR code to answer with
    description: str   # "path: message" of the deciding error
    all_errors: tuple[str, ...]


def validate(schema_name: str, payload: dict[str, Any]) -> SchemaProblem | None:
    """Validate `payload` against the official schema `schema_name` (e.g. "BootNotification",
    "GetConfigurationResponse"). None when valid; raise KeyError when there is no schema."""
    compiled = _compiled(schema_name)
    if compiled is None:
        raise KeyError(schema_name)
    instance: Any = payload
    if compiled.decimal:
        instance = json.loads(json.dumps(payload), parse_float=Decimal)
    errors = list(compiled.validator.iter_errors(instance))
    if not errors:
        return None

    def rank(err: Any) -> tuple[int, int]:
        code = _CODE_BY_KEYWORD.get(str(err.validator), "PropertyConstraintViolation")
        return (_CODE_ORDER.index(code), len(err.absolute_path))

    def describe(err: Any) -> str:
        where = "/".join(str(p) for p in err.absolute_path) or "(payload)"
        return f"{where}: {err.message}"

    best = min(errors, key=rank)
    if str(best.validator) == "type" and not best.absolute_path:
        code = "FormationViolation"  # the payload itself is not an object
    else:
        code = _CODE_BY_KEYWORD.get(str(best.validator), "PropertyConstraintViolation")
    return SchemaProblem(code, describe(best), tuple(describe(e) for e in errors))


def implausible_timestamps(schema_name: str, payload: dict[str, Any], not_before: dt.datetime) -> list[str]:
    """Date-time fields of `payload` that are earlier than `not_before` (e.g. 1970 from an
    unsynchronised clock). Malformed values are the schema's business and are skipped."""
    compiled = _compiled(schema_name)
    if compiled is None:
        return []
    found: list[str] = []

    def walk(node: Any, path: tuple[str, ...], done: tuple[str, ...]) -> None:
        if not path:
            if isinstance(node, str):
                when = parse_rfc3339(node)
                if when is not None and when < not_before:
                    found.append(f"{'/'.join(done)}={node}")
            return
        head, rest = path[0], path[1:]
        if head == "*":
            if isinstance(node, list):
                for i, item in enumerate(node):
                    walk(item, rest, (*done, str(i)))
        elif isinstance(node, dict) and head in node:
            walk(node[head], rest, (*done, head))

    for p in compiled.datetime_paths:
        walk(payload, p, ())
    return found


def iso8601(when: dt.datetime) -> str:
    """UTC, millisecond precision, "Z": the form every OCPP 1.6 implementation parses."""
    utc = when.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
