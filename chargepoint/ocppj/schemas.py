"""Compiled validation of OCPP 1.6 payloads against the official JSON schemas.

The schemas are the ones shipped in the `ocpp` package (`ocpp/v16/schemas`, 78 files
including the security extensions; errata fixes for SendLocalList, BootNotification
.conf, UpdateFirmware and StopTransaction are already in them). Each is compiled once,
lazily per action, into nested Python closures; a check is then a handful of dict
lookups and isinstance calls per field instead of a generic interpreter walk.

Pure: no asyncio, no clock, no I/O except reading the schema file on first use.

Semantics follow JSON Schema as the file's `$schema` says (draft-04, or draft-06 for
the security extensions; OCPP-J errata 3.8), matching the `jsonschema` library, with
two deliberate differences:
- multipleOf is decided on the number as written in decimal (what `ocpp` gets by
  parsing with Decimal), so 16.3 is a multiple of 0.1 although 16.3/0.1 is not an
  integer in binary floating point.
- format "date-time" is checked (RFC 3339 §5.6 grammar and field ranges) but the
  UTC offset may be omitted: OCPP 1.6 §3.15 (normative) asks for ISO 8601, where the
  offset is optional, and several central systems omit "Z"; such a time means UTC
  (§3.14). A leap second (":60") is rejected because Python datetimes cannot hold it.
  Format "uri" is not checked (neither does jsonschema without extra packages).

Violation -> OCPP-J error code (OCPP-J §4.2.3, Table 7):
- wrong JSON type of a field: TypeConstraintViolation ("violates data type
  constraints (e.g. "somestring": 12)").
- enum, maxLength/minLength, format, minimum/maximum, multipleOf:
  PropertyConstraintViolation ("at least one field contains an invalid value").
- required property missing, minItems/maxItems: OccurenceConstraintViolation
  ("violates occurrence constraints"; one-r wire spelling, errata 5.1).
- a property the schema does not allow (additionalProperties false), or a payload
  that is not an object: FormationViolation ("not conform the PDU structure for
  Action"); an extra field is not an invalid value of a known field, it is a
  different PDU, and errata 3.2 says extra fields are not allowed at all.
When a payload breaks several rules, the first one found is reported: within an
object, missing required properties first, then properties in document order.

Any schema keyword the compiler does not implement makes compilation fail
(SchemaCompileError), so a schema update cannot silently weaken validation.
"""

from __future__ import annotations

import importlib.resources
import json
import numbers
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from importlib.resources.abc import Traversable
from typing import Any, Final

from chargepoint.ocppj.frames import (
    FORMATION_VIOLATION,
    NOT_IMPLEMENTED,
    OCCURENCE_CONSTRAINT_VIOLATION,
    PROPERTY_CONSTRAINT_VIOLATION,
    TYPE_CONSTRAINT_VIOLATION,
)

Validator = Callable[[Any], None]


class SchemaViolation(Exception):
    """A payload that breaks its schema. `error_code` is the OCPP-J code to answer with;
    `path` locates the field (property names and array indexes, outermost first)."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(error_code, message)
        self.error_code = error_code
        self.message = message
        # Filled innermost-first while the exception unwinds; see `path`.
        self._reversed_path: list[str | int] = []

    @property
    def path(self) -> list[str | int]:
        return self._reversed_path[::-1]

    @property
    def description(self) -> str:
        if not self._reversed_path:
            return self.message
        text = ""
        for part in reversed(self._reversed_path):
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return f"{text}: {self.message}"

    def __str__(self) -> str:
        return f"{self.error_code}: {self.description}"


class SchemaCompileError(Exception):
    """The schema uses a keyword or construct this compiler does not implement."""


# ---------------------------------------------------------------- date-time

# RFC 3339 §5.6 date-time; offset optional (see module doc). re.ASCII: \d must not
# match other Unicode digits.
_DATE_TIME_RE: Final = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):(\d\d))?",
    re.ASCII,
)
_DAYS_IN_MONTH: Final = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _date_time_fields(text: str) -> tuple[int, ...] | None:
    m = _DATE_TIME_RE.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if not 1 <= month <= 12 or year == 0 or hour > 23 or minute > 59 or second > 59:
        return None
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= day <= (29 if month == 2 and leap else _DAYS_IN_MONTH[month]):
        return None
    offset_min = 0
    if m.group(9) is not None:
        off_h, off_m = int(m.group(10)), int(m.group(11))
        if off_h > 23 or off_m > 59:
            return None
        offset_min = (off_h * 60 + off_m) * (-1 if m.group(9) == "-" else 1)
    fraction = m.group(7)
    micro = int((fraction + "00000")[:6]) if fraction else 0
    return (year, month, day, hour, minute, second, micro, offset_min)


def is_date_time(text: str) -> bool:
    """True if `text` passes the "date-time" format check (see module doc)."""
    return _date_time_fields(text) is not None


def parse_date_time(text: str) -> datetime:
    """An aware UTC datetime from a value that passed `is_date_time`; no offset means UTC
    (OCPP 1.6 §3.14). Digits beyond microseconds are truncated. An instant beyond what
    datetime holds in UTC ("9999-12-31T23:59:59-01:00" is year 10000, "0001-01-01T00:00:00
    +01:00" year 0) becomes datetime.max / datetime.min, less than a day away. Raises
    ValueError for a value that is not a date-time."""
    fields = _date_time_fields(text)
    if fields is None:
        raise ValueError(f"not an OCPP date-time: {text!r}")
    year, month, day, hour, minute, second, micro, offset_min = fields
    local = datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone(timedelta(minutes=offset_min)))
    try:
        return local.astimezone(UTC)
    except OverflowError:   # was raised as is, although the value passed is_date_time
        return (datetime.max if year > 1 else datetime.min).replace(tzinfo=UTC)


# ---------------------------------------------------------------- compiler

# Keywords that carry no validation meaning.
_ANNOTATIONS: Final = frozenset({"$schema", "$id", "id", "title", "description", "javaType", "$comment"})
_KNOWN: Final = _ANNOTATIONS | {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "maxLength",
    "minLength",
    "format",
    "items",
    "additionalItems",
    "minItems",
    "maxItems",
    "multipleOf",
    "minimum",
    "maximum",
    "$ref",
    "definitions",
}
_STRING_KW: Final = ("maxLength", "minLength", "format")
_NUMBER_KW: Final = ("minimum", "maximum", "multipleOf")
_ARRAY_KW: Final = ("items", "additionalItems", "minItems", "maxItems")
_OBJECT_KW: Final = ("properties", "required", "additionalProperties")
_DRAFTS: Final = {
    "http://json-schema.org/draft-04/schema#": 4,
    "http://json-schema.org/draft-04/schema": 4,
    "http://json-schema.org/draft-06/schema#": 6,
    "http://json-schema.org/draft-06/schema": 6,
}


def _short(value: object, limit: int = 40) -> str:
    # Descriptions echo peer data back on the wire: keep them short.
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_string(x: object) -> bool:
    return isinstance(x, str)


def _is_integer_d4(x: object) -> bool:
    # Draft-04 (and jsonschema's Draft4Validator): 1.0 is not an integer; bool is not.
    return type(x) is int or (isinstance(x, int) and not isinstance(x, bool))


def _is_integer_d6(x: object) -> bool:
    # Draft-06 §3.2.1 (jsonschema's Draft6Validator): a number with zero fractional part.
    if type(x) is int:
        return True
    if isinstance(x, float):
        return x.is_integer()
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    t = type(x)
    if t is int or t is float:
        return True
    return isinstance(x, numbers.Number) and not isinstance(x, bool)


def _is_boolean(x: object) -> bool:
    return isinstance(x, bool)


def _is_object(x: object) -> bool:
    return isinstance(x, dict)


def _is_array(x: object) -> bool:
    return isinstance(x, list)


def _is_null(x: object) -> bool:
    return x is None


def _type_error(x: object, expected: str) -> SchemaViolation:
    return SchemaViolation(TYPE_CONSTRAINT_VIOLATION, f"{_short(x)} is not of type {expected}")


def _decimal_parts(x: object) -> tuple[int, int]:
    """(mantissa, exponent) with x == mantissa * 10**exponent exactly, for x as written in
    decimal. repr() of a float is the shortest string that round-trips, i.e. the JSON text
    for any value json.loads produced. ValueError for inf/nan.

    Integer arithmetic instead of fractions.Fraction keeps `fractions` and `decimal` (about
    0.4 MB of RSS) out of the daemon (issue 2's idle RSS budget)."""
    text = repr(x) if isinstance(x, float) else str(x)
    mantissa_text, _, exponent_text = text.lower().partition("e")
    whole, _, frac = mantissa_text.partition(".")
    if not (whole.lstrip("+-") + frac).isdigit():
        raise ValueError(f"not a finite decimal: {text}")
    return int(whole + frac), (int(exponent_text) if exponent_text else 0) - len(frac)


def _is_multiple(x: object, step: tuple[int, int]) -> bool:
    x_mantissa, x_exponent = _decimal_parts(x)
    step_mantissa, step_exponent = step
    common = min(x_exponent, step_exponent)  # bounded: |exponent| <= ~340 for any float
    return (x_mantissa * 10 ** (x_exponent - common)) % (step_mantissa * 10 ** (step_exponent - common)) == 0


def _multiple_of_check(step: object) -> Callable[[Any], bool]:
    if not _is_number(step) or isinstance(step, complex) or not step > 0:  # type: ignore[operator]
        raise SchemaCompileError(f"multipleOf must be a positive number, not {step!r}")
    step_parts = _decimal_parts(step)
    if step_parts[0] == 1 and -4 <= step_parts[1] <= 0:
        decimals = -step_parts[1]

        # Fast path for 0.1-style steps: count the decimals as written.
        def check_decimals(x: Any) -> bool:
            if type(x) is int:
                return True
            if type(x) is float:
                text = repr(x)
                if "e" not in text and "n" not in text:  # not exponent form, not inf/nan
                    frac = text.partition(".")[2].rstrip("0")
                    return len(frac) <= decimals
            try:
                return _is_multiple(x, step_parts)
            except ValueError:  # inf/nan
                return False

        return check_decimals

    def check(x: Any) -> bool:
        try:
            return _is_multiple(x, step_parts)
        except ValueError:  # inf/nan
            return False

    return check


class _Compiler:
    def __init__(self, root: Mapping[str, Any]) -> None:
        if not isinstance(root, Mapping):
            raise SchemaCompileError("schema root is not an object")
        draft_uri = root.get("$schema", "http://json-schema.org/draft-04/schema#")
        if draft_uri not in _DRAFTS:
            raise SchemaCompileError(f"unsupported $schema {draft_uri!r}")
        self.root = root
        self.is_integer = _is_integer_d6 if _DRAFTS[draft_uri] >= 6 else _is_integer_d4
        self.refs: dict[str, Validator] = {}
        self.refs_in_progress: set[str] = set()

    def compile_root(self) -> Validator:
        validator = self.compile(self.root, "#")
        # Compile every definition, used or not, so an unsupported keyword anywhere fails now.
        definitions = self.root.get("definitions", {})
        if not isinstance(definitions, Mapping):
            raise SchemaCompileError("definitions must be an object")
        for name in definitions:
            self.ref(f"#/definitions/{name}")
        return validator

    # -- $ref ---------------------------------------------------------------

    def ref(self, pointer: str) -> Validator:
        cached = self.refs.get(pointer)
        if cached is not None:
            return cached
        if pointer in self.refs_in_progress:
            raise SchemaCompileError(f"recursive $ref {pointer!r} is not supported")
        if not pointer.startswith("#/"):
            raise SchemaCompileError(f"only local $ref is supported, not {pointer!r}")
        node: Any = self.root
        for part in pointer[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or part not in node:
                raise SchemaCompileError(f"unresolvable $ref {pointer!r}")
            node = node[part]
        self.refs_in_progress.add(pointer)
        try:
            validator = self.compile(node, pointer)
        finally:
            self.refs_in_progress.discard(pointer)
        self.refs[pointer] = validator
        return validator

    # -- nodes --------------------------------------------------------------

    def compile(self, node: Any, where: str) -> Validator:
        if not isinstance(node, Mapping):
            raise SchemaCompileError(f"{where}: subschema is not an object")
        unknown = set(node) - _KNOWN
        if unknown:
            raise SchemaCompileError(f"{where}: unsupported keyword(s) {sorted(unknown)}")
        if where != "#" and "definitions" in node:
            raise SchemaCompileError(f"{where}: definitions are only supported at the root")
        if "$ref" in node:
            siblings = set(node) - _ANNOTATIONS - {"$ref"}
            if siblings:
                # Draft-04/06 ignore siblings of $ref; refuse rather than silently ignore.
                raise SchemaCompileError(f"{where}: keywords beside $ref {sorted(siblings)}")
            pointer = node["$ref"]
            if not isinstance(pointer, str):
                raise SchemaCompileError(f"{where}: $ref is not a string")
            return self.ref(pointer)

        types = node.get("type")
        if types is None:
            type_names: list[str] = []
        elif isinstance(types, str):
            type_names = [types]
        elif isinstance(types, list) and types and all(isinstance(t, str) for t in types):
            type_names = list(types)
        else:
            raise SchemaCompileError(f"{where}: bad type {types!r}")
        type_checks = {
            "string": _is_string,
            "integer": self.is_integer,
            "number": _is_number,
            "boolean": _is_boolean,
            "object": _is_object,
            "array": _is_array,
            "null": _is_null,
        }
        for t in type_names:
            if t not in type_checks:
                raise SchemaCompileError(f"{where}: unknown type {t!r}")

        enum_check = self._enum(node, where)
        # Keyword groups apply only to instances of their kind (JSON Schema semantics).
        string_check = self._string(node, where)
        number_check = self._number(node, where)
        array_check = self._array(node, where)
        object_check = self._object(node, where)

        if len(type_names) == 1:
            # One declared type: after the type check only that kind's keywords can apply.
            kind = type_names[0]
            is_type = type_checks[kind]
            kind_check = {
                "string": string_check,
                "integer": number_check,
                "number": number_check,
                "object": object_check,
                "array": array_check,
            }.get(kind)
            return _typed(is_type, kind, kind_check, enum_check)
        return _untyped(
            [type_checks[t] for t in type_names],
            type_names,
            enum_check,
            [
                (_is_string, string_check),
                (_is_number, number_check),
                (_is_array, array_check),
                (_is_object, object_check),
            ],
        )

    def _enum(self, node: Mapping[str, Any], where: str) -> Validator | None:
        if "enum" not in node:
            return None
        values = node["enum"]
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            # Non-string enums would need JSON equality (1 vs 1.0 vs true); none exist in OCPP 1.6.
            raise SchemaCompileError(f"{where}: only non-empty string enums are supported")
        allowed = frozenset(values)

        def check_enum(x: Any) -> None:
            if not isinstance(x, str) or x not in allowed:
                raise SchemaViolation(PROPERTY_CONSTRAINT_VIOLATION, f"{_short(x)} is not one of {sorted(allowed)}")

        return check_enum

    def _string(self, node: Mapping[str, Any], where: str) -> Validator | None:
        if not any(k in node for k in _STRING_KW):
            return None
        max_len = _non_negative_int(node, "maxLength", where)
        min_len = _non_negative_int(node, "minLength", where)
        fmt = node.get("format")
        date_time = False
        if fmt is not None:
            if fmt == "date-time":
                date_time = True
            elif fmt != "uri":  # uri: annotation only, see module doc
                raise SchemaCompileError(f"{where}: unsupported format {fmt!r}")
        if max_len is None and min_len is None and not date_time:
            return None

        def check_string(x: str) -> None:
            if max_len is not None and len(x) > max_len:
                raise SchemaViolation(PROPERTY_CONSTRAINT_VIOLATION, f"string longer than {max_len} characters")
            if min_len is not None and len(x) < min_len:
                raise SchemaViolation(PROPERTY_CONSTRAINT_VIOLATION, f"string shorter than {min_len} characters")
            if date_time and _date_time_fields(x) is None:
                raise SchemaViolation(PROPERTY_CONSTRAINT_VIOLATION, f"{_short(x)} is not a date-time")

        return check_string

    def _number(self, node: Mapping[str, Any], where: str) -> Validator | None:
        if not any(k in node for k in _NUMBER_KW):
            return None
        minimum = node.get("minimum")
        maximum = node.get("maximum")
        for name, bound in (("minimum", minimum), ("maximum", maximum)):
            if bound is not None and not (_is_number(bound) and not isinstance(bound, complex)):
                raise SchemaCompileError(f"{where}: {name} must be a number")
        multiple = _multiple_of_check(node["multipleOf"]) if "multipleOf" in node else None
        step = node.get("multipleOf")

        def check_number(x: Any) -> None:
            if minimum is not None and x < minimum:
                raise SchemaViolation(PROPERTY_CONSTRAINT_VIOLATION, f"{_short(x)} is less than {minimum}")
            if maximum is not None and x > maximum:
                raise SchemaViolation(PROPERTY_CONSTRAINT_VIOLATION, f"{_short(x)} is greater than {maximum}")
            if multiple is not None and not multiple(x):
                raise SchemaViolation(PROPERTY_CONSTRAINT_VIOLATION, f"{_short(x)} is not a multiple of {step}")

        return check_number

    def _array(self, node: Mapping[str, Any], where: str) -> Validator | None:
        if not any(k in node for k in _ARRAY_KW):
            return None
        items = node.get("items")
        if isinstance(items, list):
            raise SchemaCompileError(f"{where}: tuple-form items are not supported")
        item_check = self.compile(items, f"{where}/items") if items is not None else None
        additional = node.get("additionalItems")
        if additional is not None and not isinstance(additional, bool | Mapping):
            raise SchemaCompileError(f"{where}: bad additionalItems")
        if isinstance(additional, Mapping):
            self.compile(additional, f"{where}/additionalItems")  # keyword check only
        # additionalItems only constrains tuple-form items, refused above: a no-op here.
        min_items = _non_negative_int(node, "minItems", where)
        max_items = _non_negative_int(node, "maxItems", where)

        def check_array(x: list[Any]) -> None:
            n = len(x)
            if min_items is not None and n < min_items:
                raise SchemaViolation(OCCURENCE_CONSTRAINT_VIOLATION, f"{n} item(s), at least {min_items} required")
            if max_items is not None and n > max_items:
                raise SchemaViolation(OCCURENCE_CONSTRAINT_VIOLATION, f"{n} items, at most {max_items} allowed")
            if item_check is not None:
                for i, item in enumerate(x):
                    try:
                        item_check(item)
                    except SchemaViolation as exc:
                        exc._reversed_path.append(i)
                        raise

        return check_array

    def _object(self, node: Mapping[str, Any], where: str) -> Validator | None:
        if not any(k in node for k in _OBJECT_KW):
            return None
        props_schema = node.get("properties", {})
        if not isinstance(props_schema, Mapping):
            raise SchemaCompileError(f"{where}: properties must be an object")
        props = {name: self.compile(sub, f"{where}/properties/{name}") for name, sub in props_schema.items()}
        required = node.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaCompileError(f"{where}: required must be a list of strings")
        required_t = tuple(required)
        additional = node.get("additionalProperties", True)
        extra_check: Validator | None = None
        if isinstance(additional, Mapping):
            extra_check = self.compile(additional, f"{where}/additionalProperties")
            closed = False
        elif isinstance(additional, bool):
            closed = not additional
        else:
            raise SchemaCompileError(f"{where}: bad additionalProperties")

        def check_object(x: dict[str, Any]) -> None:
            for name in required_t:
                if name not in x:
                    raise SchemaViolation(OCCURENCE_CONSTRAINT_VIOLATION, f"required property {name!r} is missing")
            for name, value in x.items():
                check = props.get(name)
                if check is None:
                    if closed:
                        raise SchemaViolation(FORMATION_VIOLATION, f"property {_short(name)} is not allowed")
                    if extra_check is None:
                        continue
                    check = extra_check
                try:
                    check(value)
                except SchemaViolation as exc:
                    exc._reversed_path.append(name)
                    raise

        return check_object


def _non_negative_int(node: Mapping[str, Any], keyword: str, where: str) -> int | None:
    value = node.get(keyword)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise SchemaCompileError(f"{where}: {keyword} must be a non-negative integer")
    return value


def _typed(
    is_type: Callable[[Any], bool], kind: str, kind_check: Validator | None, enum_check: Validator | None
) -> Validator:
    # Specialised closures for the shapes the OCPP schemas actually use.
    if kind_check is None and enum_check is None:

        def check_type(x: Any) -> None:
            if not is_type(x):
                raise _type_error(x, kind)

        return check_type
    if enum_check is None:
        assert kind_check is not None
        inner = kind_check

        def check_type_kind(x: Any) -> None:
            if not is_type(x):
                raise _type_error(x, kind)
            inner(x)

        return check_type_kind

    def check_all(x: Any) -> None:
        if not is_type(x):
            raise _type_error(x, kind)
        assert enum_check is not None
        enum_check(x)
        if kind_check is not None:
            kind_check(x)

    return check_all


def _untyped(
    is_types: list[Callable[[Any], bool]],
    type_names: list[str],
    enum_check: Validator | None,
    kind_checks: list[tuple[Callable[[Any], bool], Validator | None]],
) -> Validator:
    active = [(guard, check) for guard, check in kind_checks if check is not None]
    expected = " or ".join(type_names)

    def check_any(x: Any) -> None:
        if is_types and not any(is_type(x) for is_type in is_types):
            raise _type_error(x, expected)
        if enum_check is not None:
            enum_check(x)
        for guard, check in active:
            if guard(x):
                check(x)

    return check_any


def compile_schema(schema: Mapping[str, Any]) -> Validator:
    """Compile a JSON schema into a validator that raises SchemaViolation.

    Raises SchemaCompileError for anything this compiler does not implement."""
    return _Compiler(schema).compile_root()


# ---------------------------------------------------------------- OCPP 1.6 actions

_known: frozenset[str] | None = None
_validators: dict[tuple[str, bool], Validator] = {}


def _schema_dir() -> Traversable:
    return importlib.resources.files("ocpp") / "v16" / "schemas"


def known_actions() -> frozenset[str]:
    """Every action with an OCPP 1.6 request schema (both directions, security extensions included)."""
    global _known
    if _known is None:
        names = {entry.name[: -len(".json")] for entry in _schema_dir().iterdir() if entry.name.endswith(".json")}
        _known = frozenset(n for n in names if not n.endswith("Response"))
    return _known


def is_known_action(action: str) -> bool:
    return action in known_actions()


def load_schema(action: str, response: bool = False) -> dict[str, Any]:
    """The official schema as a dict (KeyError for an unknown action)."""
    if action not in known_actions():
        raise KeyError(action)
    name = f"{action}Response.json" if response else f"{action}.json"
    schema: dict[str, Any] = json.loads((_schema_dir() / name).read_text(encoding="utf-8-sig"))
    return schema


def _validator(action: str, response: bool) -> Validator:
    key = (action, response)
    validator = _validators.get(key)
    if validator is None:
        if action not in known_actions():
            raise SchemaViolation(NOT_IMPLEMENTED, f"unknown action {_short(action)}")
        validator = _validators[key] = compile_schema(load_schema(action, response))
    return validator


def validate(action: str, payload: object, response: bool = False) -> None:
    """Validate a request (or, with response=True, a response) payload of `action`.

    Raises SchemaViolation; for an action that is not OCPP 1.6 its code is NotImplemented."""
    validator = _validators.get((action, response)) or _validator(action, response)
    if type(payload) is not dict:
        # OCPP-J 4.2.1/4.2.2: the payload is a JSON object; anything else is not the PDU.
        raise SchemaViolation(FORMATION_VIOLATION, "payload is not a JSON object")
    validator(payload)


def validate_request(action: str, payload: object) -> None:
    validate(action, payload, False)


def validate_response(action: str, payload: object) -> None:
    validate(action, payload, True)


def compile_all() -> int:
    """Compile every shipped schema now (e.g. at start-up or in a test); returns how many."""
    count = 0
    for action in sorted(known_actions()):
        for response in (False, True):
            _validator(action, response)
            count += 1
    return count
