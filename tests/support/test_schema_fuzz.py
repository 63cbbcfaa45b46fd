"""The fuzz payload generator (tests/support/schema_fuzz.py): every payload it makes is valid
for the request schema by BOTH the project's compiled validator and the `jsonschema`
library, and it really produces the edge cases it promises (enum values, optional fields
present and absent, strings at 0 and maxLength characters with non-ASCII, integer edges,
connectorId 0 / existing / unknown), deterministically."""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import jsonschema
import pytest

from chargepoint.ocppj import schemas
from tests.ocppj.test_schemas_vs_jsonschema import FORMAT_CHECKER
from tests.support.schema_fuzz import (
    BEYOND_INT64,
    CS_TO_CP_ACTIONS,
    DEFAULT_NOW,
    INT32_MAX,
    INT32_MIN,
    UNREACHABLE_URLS,
    PayloadGenerator,
    charger_hints,
    resolve_ref,
    sane_payloads,
)

# Coverage is checked at 30 random payloads per action; the end-to-end fuzz
# (tests/e2e/test_fuzz_actions.py) sends more (40, plus variations of sane payloads).
PER_ACTION = 30


def _jsonschema_validator(action: str) -> jsonschema.protocols.Validator:
    schema = schemas.load_schema(action)
    cls = jsonschema.validators.validator_for(schema)
    # jsonschema checks "date-time" only with an extra package; the oracle from
    # tests/ocppj/test_schemas_vs_jsonschema.py stands in for it (offset optional, OCPP 1.6 §3.15).
    validator: jsonschema.protocols.Validator = cls(schema, format_checker=FORMAT_CHECKER)
    return validator


def _on_the_wire(payload: dict[str, Any]) -> Any:
    # As the central system sends it: JSON text, parsed again (floats as repr writes them).
    return json.loads(json.dumps(payload))


@pytest.mark.parametrize("action", sorted(schemas.known_actions()))
def test_every_generated_payload_is_valid_by_both_validators(action: str) -> None:
    hints = charger_hints(action) if action in CS_TO_CP_ACTIONS else {}
    generator = PayloadGenerator(action, seed=1, hints=hints)
    checker = _jsonschema_validator(action)
    for index, payload in enumerate(generator.payloads(60)):
        wire = _on_the_wire(payload)
        schemas.validate_request(action, wire)   # raises SchemaViolation
        errors = [e.message for e in checker.iter_errors(wire)]
        assert not errors, f"{action} #{index}: {errors} in {payload!r}"


def test_same_seed_same_payloads_other_seed_others() -> None:
    def run(seed: int) -> str:
        return json.dumps([PayloadGenerator(a, seed=seed).payloads(5) for a in CS_TO_CP_ACTIONS])

    assert run(7) == run(7)
    assert run(7) != run(8)


# ------------------------------------------------------------------ coverage, checked on the payloads


class _Seen:
    def __init__(self) -> None:
        self.values: dict[str, list[Any]] = defaultdict(list)
        self.presence: dict[str, set[bool]] = defaultdict(set)
        self.nodes: dict[str, Mapping[str, Any]] = {}
        self.optional: set[str] = set()

    def walk(self, root: Mapping[str, Any], node: Mapping[str, Any], value: Any, path: str) -> None:
        node = resolve_ref(root, node)
        self.nodes[path] = node
        self.values[path].append(value)
        if isinstance(value, dict):
            required = set(node.get("required", []))
            for name, sub in node.get("properties", {}).items():
                child = f"{path}.{name}" if path else name
                self.nodes.setdefault(child, resolve_ref(root, sub))
                if name not in required:
                    self.optional.add(child)
                self.presence[child].add(name in value)
                if name in value:
                    self.walk(root, sub, value[name], child)
        elif isinstance(value, list):
            for item in value:
                self.walk(root, node.get("items", {}), item, path + "[]")


def _seen(action: str, n: int) -> _Seen:
    seen = _Seen()
    schema = schemas.load_schema(action)
    for payload in PayloadGenerator(action, seed=0).payloads(n):
        seen.walk(schema, schema, payload, "")
    return seen


@pytest.mark.parametrize("action", CS_TO_CP_ACTIONS)
def test_the_payloads_of_an_action_cover_the_edge_cases(action: str) -> None:
    seen = _seen(action, PER_ACTION)
    for path in seen.optional:
        assert seen.presence[path] == {True, False}, f"{path}: present and absent"
    for path, node in seen.nodes.items():
        values = seen.values.get(path, [])
        if path and not values:
            pytest.fail(f"{path} never generated")
        if "enum" in node:
            assert set(values) == set(node["enum"]), f"{path}: every enum value"
        elif path.endswith("connectorId"):
            assert {0, 1, 99} <= set(values), f"{path}: 0, existing, unknown"
        elif node.get("type") == "integer":
            assert {0, 1, -1, INT32_MAX, INT32_MIN, BEYOND_INT64} <= set(values), f"{path}: integer edges"
        elif node.get("type") == "string" and "maxLength" in node:
            lengths = {len(v) for v in values}
            assert {0, 1, node["maxLength"]} <= lengths, f"{path}: lengths {sorted(lengths)}"
            assert any(not v.isascii() for v in values), f"{path}: some non-ASCII"
        elif node.get("format") == "date-time":
            assert any(v.endswith("Z") for v in values) and any(v[-1].isdigit() for v in values)
            assert any("." in v for v in values) and any("." not in v for v in values)
            parsed = [schemas.parse_date_time(v) for v in values]
            assert min(parsed) < DEFAULT_NOW < max(parsed), f"{path}: past and future"
        elif node.get("type") == "array":
            assert {len(v) for v in values} >= {0, 1}, f"{path}: empty and non-empty"


def test_numbers_with_decimals_respect_multiple_of() -> None:
    seen = _seen("SetChargingProfile", 60)
    limits = seen.values["csChargingProfiles.chargingSchedule.chargingSchedulePeriod[].limit"]
    assert any(isinstance(x, float) and not x.is_integer() for x in limits)
    assert {0, 0.1, -0.1, INT32_MAX} <= set(limits)
    # Validity by both readings of multipleOf 0.1 is checked above on every payload.


def test_draft6_integers_include_an_integral_float() -> None:
    """Draft-06 §3.2.1: 7.0 is an integer; the Security Whitepaper schemas are draft-06."""
    values = _seen("GetLog", PER_ACTION).values["requestId"]
    assert any(isinstance(v, float) and v.is_integer() for v in values)
    assert all(not isinstance(v, float) for v in _seen("ReserveNow", PER_ACTION).values["reservationId"])


def test_charger_hints_keep_transfers_on_loopback_and_retries_small() -> None:
    for action, path in (("UpdateFirmware", "location"), ("GetDiagnostics", "location"),
                         ("GetLog", "log.remoteLocation"), ("SignedUpdateFirmware", "firmware.location")):
        generator = PayloadGenerator(action, hints=charger_hints(action))
        schema = schemas.load_schema(action)
        seen = _Seen()
        for payload in generator.payloads(PER_ACTION):
            seen.walk(schema, schema, payload, "")
        assert set(seen.values[path]) == set(UNREACHABLE_URLS), action
        assert all(abs(v) <= 2 for v in seen.values.get("retries", []) + seen.values.get("retryInterval", []))
    keys = {p["key"] for p in PayloadGenerator("ChangeConfiguration", hints=charger_hints("ChangeConfiguration"))
            .payloads(200)}
    assert not keys & {"AuthorizationKey", "SecurityProfile", "WebSocketPingInterval", "MinimumStatusDuration"}
    assert {"HeartbeatInterval", "NoSuchKey"} <= keys


@pytest.mark.parametrize("action", CS_TO_CP_ACTIONS)
def test_variations_of_a_sane_payload_are_valid_and_change_one_thing(action: str) -> None:
    checker = _jsonschema_validator(action)
    for base in sane_payloads(action):
        schemas.validate_request(action, _on_the_wire(base))
        assert not list(checker.iter_errors(_on_the_wire(base))), base
        variations = PayloadGenerator(action, seed=3, hints=charger_hints(action)).variations(base, 40)
        for payload in variations:
            wire = _on_the_wire(payload)
            schemas.validate_request(action, wire)
            assert not [e.message for e in checker.iter_errors(wire)], payload
        assert [p for p in variations if p != base]
        # Every top-level property of the base was changed (or dropped) at least once.
        for name in base:
            assert any(p.get(name, object()) != base[name] for p in variations), f"{action}: {name} never varied"


def _one_change_away(base: dict[str, Any], payload: dict[str, Any], paths: list[list[Any]]) -> bool:
    """`payload` is `base` with the value at one of `paths` replaced, added or removed."""
    for path in paths:
        candidate = copy.deepcopy(base)
        parent, source = candidate, payload
        try:
            for part in path[:-1]:
                parent, source = parent[part], source[part]
        except (KeyError, IndexError, TypeError):
            continue
        key = path[-1]
        if isinstance(source, dict) and key not in source:
            parent.pop(key, None)
        else:
            try:
                parent[key] = source[key]
            except (KeyError, IndexError, TypeError):
                continue
        if candidate == payload:
            return True
    return False


def test_variations_reach_nested_fields_and_change_one_site_each() -> None:
    base = sane_payloads("SetChargingProfile")[0]
    generator = PayloadGenerator("SetChargingProfile", seed=3)
    variations = generator.variations(base, 200)
    paths = [path for path, _node, _optional in generator._sites(generator.schema, base, [])]
    assert ["csChargingProfiles", "chargingSchedule", "chargingSchedulePeriod", 1, "limit"] in paths
    for payload in variations:
        assert _one_change_away(base, payload, paths), payload
    schedules = [p["csChargingProfiles"]["chargingSchedule"] for p in variations
                 if p["csChargingProfiles"]["chargingProfileId"] == 11]
    assert len({json.dumps(s.get("chargingSchedulePeriod")) for s in schedules}) > 3
    assert any("minChargingRate" not in s for s in schedules)   # an optional property dropped
