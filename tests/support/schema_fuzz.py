"""Deterministic generator of schema-VALID but unusual OCPP 1.6 request payloads.

Built from the official request schemas (`chargepoint.ocppj.schemas.load_schema`), driven
by a seeded `random.Random` (not hypothesis: the end-to-end fuzz test keeps one charger
running across hundreds of examples, and a failing example must be reproducible from its
action and index alone).

Each leaf of a schema has a list of edge-case candidates; a per-leaf shuffled "deck" deals
them out, so every candidate of a leaf is used once before any is used twice. With a few
dozen payloads per action that covers:
- optional properties present and absent (required ones always present);
- every enum value;
- strings of 0, 1, half and maxLength characters, ASCII and non-ASCII (Latin-1, CJK,
  astral-plane, control characters, quotes and backslashes);
- integers 0, 1, -1, 2**31-1, -2**31, 2**63 and -2**63-1 (beyond a 64-bit integer: JSON
  and the schemas set no bound) and a small random one; in draft-06 schemas (the
  Security Whitepaper messages) also an integral float such as 7.0, which draft-06
  §3.2.1 counts as an integer;
- numbers with decimals that respect multipleOf (checked both as written in decimal and
  as the `jsonschema` library checks it, so both validators agree);
- arrays at minItems/maxItems and a few sizes between;
- date-times in the far past and far future, around `now`, with and without fractional
  seconds, with "Z", with a numeric offset, and without any offset (OCPP 1.6 §3.15
  allows ISO 8601 without an offset; the project's validator accepts it, see
  chargepoint/ocppj/schemas.py);
- connectorId 0, the charger's connectors, and connectors it does not have (2, 99).

`hints` replace a leaf's candidates: a key is a path ("firmware.location",
"localAuthorizationList[].idTag") or a bare property name ("connectorId"); a value is a
list of candidates (dealt like any deck) or a function of the generator's Random.
"""

from __future__ import annotations

import copy
import datetime as dt
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from chargepoint.ocppj.schemas import load_schema

Hint = Sequence[Any] | Callable[[random.Random], Any]

INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)
# JSON integers are unbounded and the 1.6 schemas set no maximum: one past SQLite's 64-bit
# INTEGER (and Python's C long) is schema-valid too.
BEYOND_INT64 = 2**63
# A fixed "now" keeps the generator deterministic when the caller does not pass one.
DEFAULT_NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)

# Characters for the non-ASCII strings: Latin-1, the euro sign, CJK, an astral-plane
# character (a surrogate pair in UTF-16, one code point for JSON Schema's maxLength),
# a right-to-left letter, a combining mark, NUL and other control characters, and the
# characters that need escaping in JSON, SQL or shell.
_UNICODE_POOL = "éüßñ€中文字𝄞😀א\u0301\x00\n\t\r\x7f\u2028\"\\'%_;<>&"
_ASCII_POOL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_. "


class _Deck:
    """Deals each candidate once, in a shuffled order, before shuffling them all again."""

    def __init__(self, candidates: Sequence[Any], rng: random.Random) -> None:
        if not candidates:
            raise ValueError("empty candidate list")
        self._candidates = list(candidates)
        self._rng = rng
        self._left: list[Any] = []

    def draw(self) -> Any:
        if not self._left:
            self._left = list(self._candidates)
            self._rng.shuffle(self._left)
        return self._left.pop()


def _dotted(path: Sequence[str | int]) -> str:
    """["a", "b", 0, "c"] -> "a.b[].c" (the path form decks and hints use)."""
    text = ""
    for part in path:
        text += "[]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _iso(when: dt.datetime, *, fraction_digits: int = 0, suffix: str = "Z") -> str:
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if fraction_digits:
        text += "." + f"{when.microsecond:06d}"[:fraction_digits].ljust(fraction_digits, "0")
    return text + suffix


def date_time_candidates(now: dt.datetime) -> list[str]:
    """Valid date-times: past/future, with and without fraction, "Z", offset, no offset."""
    now = now.astimezone(dt.UTC)
    return [
        _iso(now),
        _iso(now + dt.timedelta(seconds=90), fraction_digits=3),
        _iso(now + dt.timedelta(hours=1), fraction_digits=6),
        _iso(now - dt.timedelta(hours=1), fraction_digits=1),
        _iso(now + dt.timedelta(days=1), suffix=""),                      # no offset: UTC (§3.14)
        _iso(now + dt.timedelta(minutes=5), fraction_digits=3, suffix=""),
        _iso(now + dt.timedelta(days=30), suffix="+02:00"),
        _iso(now - dt.timedelta(days=30), suffix="-05:30"),
        "1970-01-01T00:00:00Z",
        "2000-02-29T23:59:59.999Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
        "2099-12-31T23:59:59+14:00",
        "9999-12-31T23:59:59-01:00",        # valid RFC 3339, but in UTC it is year 10000
        "0001-01-01T00:00:00+01:00",        # ... and this one is year 0 in UTC
        "2000-01-01T00:00:00.123456789Z",   # more digits than a datetime holds
    ]


def _multiple_ok(value: float | int, step: float | int) -> bool:
    """multipleOf as `jsonschema` decides it (float division) AND as written in decimal."""
    from chargepoint.ocppj.schemas import _decimal_parts, _is_multiple

    if isinstance(step, float):
        quotient = value / step
        if int(quotient) != quotient:
            return False
    elif value % step:
        return False
    return _is_multiple(value, _decimal_parts(step))


def resolve_ref(root: Mapping[str, Any], node: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow local "$ref": "#/..." pointers (the only kind the OCPP 1.6 schemas use)."""
    while "$ref" in node:
        target: Any = root
        for part in str(node["$ref"])[2:].split("/"):
            target = target[part]
        node = target
    return node


class PayloadGenerator:
    """Schema-valid payloads for one action's request schema (see module doc)."""

    def __init__(self, action: str, *, seed: int | str = 0, now: dt.datetime = DEFAULT_NOW,
                 hints: Mapping[str, Hint] | None = None, connector_ids: Sequence[int] = (1,),
                 response: bool = False) -> None:
        self.action = action
        self.schema = load_schema(action, response)
        self.draft6 = "draft-06" in str(self.schema.get("$schema", ""))
        # A str seed hashes deterministically (random.seed version 2), unlike hash().
        self.rng = random.Random(f"{seed}:{action}:{'conf' if response else 'req'}")
        self.now = now
        connectors = sorted({0, *connector_ids, max(connector_ids, default=0) + 1, 99, -1, INT32_MAX})
        self.hints: dict[str, Hint] = {"connectorId": connectors, **(hints or {})}
        self._decks: dict[str, _Deck] = {}

    # ------------------------------------------------------------------ public

    def payload(self) -> dict[str, Any]:
        value = self._value(self.schema, "")
        assert isinstance(value, dict)
        return value

    def payloads(self, n: int) -> list[dict[str, Any]]:
        return [self.payload() for _ in range(n)]

    def variations(self, base: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
        """`n` copies of `base` (a sane payload), each with ONE change: a property replaced by
        a value from its deck, or an optional property added or removed. Everything else
        stays sane, so the handler gets past its first check and the unusual value reaches
        the logic behind it (random payloads mostly stop at the first bad connectorId)."""
        sites = self._sites(self.schema, base, [])
        if not sites:
            return [copy.deepcopy(dict(base)) for _ in range(n)]
        deck = _Deck(range(len(sites)), self.rng)
        result = []
        for _ in range(n):
            path, node, optional = sites[deck.draw()]
            payload = copy.deepcopy(dict(base))
            parent: Any = payload
            for part in path[:-1]:
                parent = parent[part]
            key = path[-1]
            present = isinstance(parent, dict) and key in parent
            dotted = _dotted(path)
            if optional and present and self._deck("drop:" + dotted, lambda: [True, False, False]).draw():
                del parent[key]
            else:
                parent[key] = self._value(node, dotted)
            result.append(payload)
        return result

    def _sites(self, node: Mapping[str, Any], value: Any, path: list[str | int]) -> list[
            tuple[list[str | int], Mapping[str, Any], bool]]:
        """(path, schema node, optional) of every place `variations` may change."""
        node = self._resolve(node)
        sites: list[tuple[list[str | int], Mapping[str, Any], bool]] = []
        if isinstance(value, dict):
            required = set(node.get("required", []))
            for name, sub in node.get("properties", {}).items():
                child = [*path, name]
                sites.append((child, sub, name not in required))
                if name in value:
                    sites.extend(self._sites(sub, value[name], child))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                item_path = [*path, index]
                sites.append((item_path, node.get("items", {}), False))
                sites.extend(self._sites(node.get("items", {}), item, item_path))
        return sites

    # ------------------------------------------------------------------ internals

    def _deck(self, key: str, candidates: Callable[[], Sequence[Any]]) -> _Deck:
        deck = self._decks.get(key)
        if deck is None:
            deck = self._decks[key] = _Deck(candidates(), self.rng)
        return deck

    def _resolve(self, node: Mapping[str, Any]) -> Mapping[str, Any]:
        return resolve_ref(self.schema, node)

    def _hint(self, path: str) -> Hint | None:
        if path in self.hints:
            return self.hints[path]
        if path.endswith("[]"):
            return None   # array items take only a path hint
        return self.hints.get(path.rsplit(".", 1)[-1])

    def _value(self, node: Mapping[str, Any], path: str) -> Any:
        node = self._resolve(node)
        hint = self._hint(path) if path else None
        if hint is not None:
            if callable(hint):
                return hint(self.rng)
            return self._deck("hint:" + path, lambda: list(hint)).draw()  # type: ignore[arg-type]
        if "enum" in node:
            return self._deck(path, lambda: list(node["enum"])).draw()
        kind = node.get("type")
        if isinstance(kind, list):
            kind = self._deck("type:" + path, lambda: list(kind)).draw()
        if kind == "object":
            return self._object(node, path)
        if kind == "array":
            return self._array(node, path)
        if kind == "string":
            return self._string(node, path)
        if kind == "integer":
            return self._integer(node, path)
        if kind == "number":
            return self._number(node, path)
        if kind == "boolean":
            return self._deck(path, lambda: [True, False]).draw()
        if kind == "null":
            return None
        raise ValueError(f"{self.action} {path}: no generator for {node!r}")

    def _object(self, node: Mapping[str, Any], path: str) -> dict[str, Any]:
        required = set(node.get("required", []))
        result: dict[str, Any] = {}
        for name, sub in node.get("properties", {}).items():
            child = f"{path}.{name}" if path else name
            if name not in required and not self._deck("present:" + child, lambda: [True, False]).draw():
                continue
            result[name] = self._value(sub, child)
        return result

    def _array(self, node: Mapping[str, Any], path: str) -> list[Any]:
        low = int(node.get("minItems", 0))
        high = node.get("maxItems")
        sizes = {low, low + 1, low + 2, low + 5}
        if high is not None:
            sizes = {s for s in sizes if s <= high} | {int(high)}
        size = self._deck("size:" + path, lambda: sorted(sizes)).draw()
        items = node.get("items", {})
        return [self._value(items, path + "[]") for _ in range(size)]

    def _string(self, node: Mapping[str, Any], path: str) -> str:
        if node.get("format") == "date-time":
            return str(self._deck(path, lambda: date_time_candidates(self.now)).draw())
        low = int(node.get("minLength", 0))
        high = node.get("maxLength")
        lengths = {low, low + 1, low + 20, low + 1000} if high is None else {low, low + 1, (low + high) // 2, high}
        if high is not None:
            lengths = {n for n in lengths if n <= high}
        shapes = [(n, pool) for n in sorted(lengths) for pool in ("ascii", "unicode") if n > 0 or pool == "ascii"]
        length, pool = self._deck(path, lambda: shapes).draw()
        chars = _ASCII_POOL if pool == "ascii" else _UNICODE_POOL
        return "".join(self.rng.choice(chars) for _ in range(length))

    def _integer(self, node: Mapping[str, Any], path: str) -> int | float:
        candidates: list[Any] = [0, 1, -1, INT32_MAX, INT32_MIN, BEYOND_INT64, -BEYOND_INT64 - 1, "small"]
        if self.draft6:
            candidates.append("integral-float")
        low, high = node.get("minimum"), node.get("maximum")
        choice = self._deck(path, lambda: candidates).draw()
        if choice == "small":
            value: int | float = self.rng.randint(2, 1000)
        elif choice == "integral-float":
            value = float(self.rng.randint(2, 1000))   # draft-06 §3.2.1: 7.0 is an integer
        else:
            value = choice
        if low is not None and value < low:
            value = low
        if high is not None and value > high:
            value = high
        return value

    def _number(self, node: Mapping[str, Any], path: str) -> int | float:
        step = node.get("multipleOf")
        raw: list[int | float] = [0, 0.0, 1, -1, 0.5, 6.4, 16.3, 32.1, 0.1, -0.1, 12.5, 1e6, 1.5e-5, INT32_MAX,
                                  2147483647.5, 1e22]
        candidates = [x for x in raw if step is None or _multiple_ok(x, step)]
        low, high = node.get("minimum"), node.get("maximum")
        candidates = [x for x in candidates if (low is None or x >= low) and (high is None or x <= high)]
        if not candidates:
            candidates = [low if low is not None else high]
        return self._deck(path, lambda: candidates).draw()  # type: ignore[no-any-return]


# ====================================================================== the charger's fuzz set

# Central system -> charge point actions: OCPP 1.6 §5 (core profiles) and the Security
# Whitepaper edition 3 extensions (§5, M, N, L use cases).
CS_TO_CP_ACTIONS: tuple[str, ...] = (
    "CancelReservation", "ChangeAvailability", "ChangeConfiguration", "ClearCache", "ClearChargingProfile",
    "DataTransfer", "GetCompositeSchedule", "GetConfiguration", "GetDiagnostics", "GetLocalListVersion",
    "RemoteStartTransaction", "RemoteStopTransaction", "ReserveNow", "Reset", "SendLocalList",
    "SetChargingProfile", "TriggerMessage", "UnlockConnector", "UpdateFirmware",
    "CertificateSigned", "DeleteCertificate", "ExtendedTriggerMessage", "GetInstalledCertificateIds",
    "GetLog", "InstallCertificate", "SignedUpdateFirmware",
)

# Actions left out of the valid-payload fuzz, and why.
EXCLUDED: dict[str, str] = {
    "Reset": "restarts the charger (Hard: the process; Soft: the app) -- ends the session under test",
}

# File transfers (UpdateFirmware, SignedUpdateFirmware, GetDiagnostics, GetLog) go only to
# loopback port 9 (discard; nothing listens in the test), so every download/upload fails at
# once with "connection refused" and nothing leaves the machine. Odd but loopback-only
# shapes: another scheme, an IPv6 literal, userinfo, percent-escapes, non-ASCII, an empty
# string and text that is no URL at all (format "uri" is not validated, see schemas.py).
UNREACHABLE_URLS: tuple[str, ...] = (
    "http://127.0.0.1:9/x",
    "https://127.0.0.1:9/firmware.bin?v=1#frag",
    "http://localhost:9/a%20b/c",
    "http://[::1]:9/x",
    "ftp://user:secret@127.0.0.1:9/diag",
    "http://127.0.0.1:9/" + "é" * 40,
    "http://127.0.0.1:9/" + "a" * 480,
    "",
    "not a url",
)
# Retries and intervals kept small: a failing transfer with 2**31-1 retries every 0 s would
# pile up background work for the rest of the run. Negative values are kept: odd but valid.
SMALL_RETRIES: tuple[int, ...] = (0, 1, 2, -1)
SMALL_INTERVALS_S: tuple[int, ...] = (0, 1, -1)

# ChangeConfiguration: keys that would end or change the connection under test are left
# out -- AuthorizationKey (new basic-auth password, reconnect; the central system would then
# expect the fuzzed password), SecurityProfile (reconnect with another profile, errata of
# Security WP A05) and WebSocketPingInterval (0 turns pings off; a tiny one plus a slow
# machine could time the link out). HeartbeatInterval is fine. Unknown keys are included.
CONNECTION_KEYS = frozenset({"AuthorizationKey", "SecurityProfile", "WebSocketPingInterval"})
# Also left out: MinimumStatusDuration (§9.1.22). Once non-zero, short-lived statuses are
# legitimately never reported, so the reported sequence may skip table steps and the fuzz
# test's §4.9 transition check would flag the debounce, not a bug.
UNFUZZED_KEYS = CONNECTION_KEYS | {"MinimumStatusDuration"}
_CONFIG_VALUES: tuple[str, ...] = (
    "", " ", "0", "1", "-1", "5", "60", "3600", "86400", "86401", str(INT32_MAX), str(INT32_MAX + 1),
    "99999999999999999999999", "1.5", "1e3", "0x10", " 30 ", "+5", "1_000", "٣", "１０",
    "true", "false", "TRUE", "False", "yes", "null",
    "Energy.Active.Import.Register", "Voltage.L2,Current.Import.L1", "Energy.Active.Import.Register," * 9,
    "1.RST, 2.RTS", "0.RST", "x.RST", "Core,SmartCharging", "é€中𝄞", "\x00", "a" * 500,
)


def _configurable_keys() -> list[str]:
    from chargepoint.services.configuration import default_key_table

    return [spec.name for spec in default_key_table(number_of_connectors=1) if spec.name not in UNFUZZED_KEYS]


_certificate_cache: dict[str, list[str]] = {}


def wrong_certificates(charge_point_id: str = "CP-TEST-1") -> list[str]:
    """Certificates and near-certificates that no charger may accept: real-looking PEM
    that is wrong for the purpose (not a CA, expired, not yet valid, a chain where one
    certificate is wanted, signed by an unknown CA for our CN, a private key), and PEM
    text that is no certificate at all. Made once per process (key generation is slow)."""
    cached = _certificate_cache.get(charge_point_id)
    if cached is not None:
        return cached
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from chargepoint.devtools.pki import issue, make_ca

    def pem(cert: x509.Certificate) -> str:
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    def self_signed_ca(cn: str, not_before: dt.datetime, not_after: dt.datetime) -> x509.Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(not_before)
                .not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))

    now = dt.datetime.now(dt.UTC)
    ca, ca_key = make_ca("fuzz: unknown CA")
    leaf, leaf_key = issue(ca, ca_key, "fuzz leaf", hosts=("localhost",))
    ours_wrong_ca, _ = issue(ca, ca_key, charge_point_id, client=True)   # our CN, not our key or CA
    expired = self_signed_ca("fuzz: expired CA", now - dt.timedelta(days=400), now - dt.timedelta(days=1))
    future = self_signed_ca("fuzz: future CA", now + dt.timedelta(days=1), now + dt.timedelta(days=400))
    key_pem = leaf_key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    body = pem(leaf).splitlines()
    result = [
        pem(leaf),                                   # not a CA
        pem(expired),
        pem(future),
        pem(leaf) + pem(ca),                         # a chain, where one certificate is wanted
        pem(ours_wrong_ca) + pem(ca),                # our CN, unknown CA, no matching CSR key
        pem(ours_wrong_ca),
        key_pem,                                     # a private key, not a certificate
        "\n".join(body[:1] + body[1:4] + body[-1:]),  # truncated body
        "\n".join([*body[:1], "@@@@not base64@@@@", *body[-1:]]),
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\nMIIB\n",      # no END line
        "-----BEGIN CERTIFICATE-----\r\n" + "A" * 64 + "\r\n-----END CERTIFICATE-----\r\n",
        "garbage",
        "",
        "é€中𝄞\x00",
    ]
    _certificate_cache[charge_point_id] = result
    return result


def charger_hints(action: str, *, now: dt.datetime = DEFAULT_NOW) -> dict[str, Hint]:
    """The per-action constraints of the charger fuzz test (see the comments above)."""
    if action in ("UpdateFirmware", "GetDiagnostics"):
        return {"location": UNREACHABLE_URLS, "retries": SMALL_RETRIES, "retryInterval": SMALL_INTERVALS_S}
    if action in ("GetLog", "SignedUpdateFirmware"):
        hints: dict[str, Hint] = {"log.remoteLocation": UNREACHABLE_URLS, "firmware.location": UNREACHABLE_URLS,
                                  "retries": SMALL_RETRIES, "retryInterval": SMALL_INTERVALS_S}
        if action == "SignedUpdateFirmware":
            hints["firmware.signingCertificate"] = wrong_certificates()
            hints["firmware.signature"] = ("", "AAAA", "MEUCIQ==", "not base64!", "=" * 800, "A" * 800)
        return hints
    if action == "ChangeConfiguration":
        unknown = ("", "NoSuchKey", "heartbeatinterval", "HeartbeatInterval ", "é€中𝄞", "K" * 50,
                   "VendorX.Key", "AuthorizationKeyX")
        return {"key": (*_configurable_keys(), *unknown), "value": _CONFIG_VALUES}
    if action == "CertificateSigned":
        return {"certificateChain": wrong_certificates()}
    if action == "InstallCertificate":
        return {"certificate": wrong_certificates()}
    return {}


def sane_payloads(action: str, *, now: dt.datetime = DEFAULT_NOW) -> list[dict[str, Any]]:
    """Payloads the charger under test (one or two connectors, idle or charging) can act on:
    the bases of `PayloadGenerator.variations`. File transfers go to loopback port 9 (see
    UNREACHABLE_URLS); an empty list where a base would add nothing to the random payloads."""
    def iso(delta: dt.timedelta) -> str:
        return _iso(now + delta, fraction_digits=3)

    url = UNREACHABLE_URLS[0]
    period = {"startPeriod": 0, "limit": 16.0}
    schedule_a = {"chargingRateUnit": "A", "chargingSchedulePeriod": [period, {"startPeriod": 600, "limit": 8.5}]}
    tx_default = {"chargingProfileId": 11, "stackLevel": 1, "chargingProfilePurpose": "TxDefaultProfile",
                  "chargingProfileKind": "Absolute",
                  "chargingSchedule": {**schedule_a, "startSchedule": iso(dt.timedelta(0)), "duration": 3600,
                                       "minChargingRate": 6.0}}
    cp_max = {"chargingProfileId": 12, "stackLevel": 0, "chargingProfilePurpose": "ChargePointMaxProfile",
              "chargingProfileKind": "Recurring", "recurrencyKind": "Daily",
              "validFrom": iso(-dt.timedelta(days=1)), "validTo": iso(dt.timedelta(days=30)),
              "chargingSchedule": {"chargingRateUnit": "W", "startSchedule": iso(-dt.timedelta(hours=2)),
                                   "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000.0, "numberPhases": 3}]}}
    tx_profile = {"chargingProfileId": 13, "stackLevel": 2, "chargingProfilePurpose": "TxProfile",
                  "chargingProfileKind": "Relative", "chargingSchedule": {"chargingRateUnit": "A",
                                                                         "chargingSchedulePeriod": [period]}}
    bases: dict[str, list[dict[str, Any]]] = {
        "CancelReservation": [{"reservationId": 1}],
        "ChangeAvailability": [{"connectorId": 1, "type": "Operative"}],
        "ChangeConfiguration": [{"key": "HeartbeatInterval", "value": "300"}],
        "ClearChargingProfile": [{"id": 11}, {"connectorId": 1, "chargingProfilePurpose": "TxDefaultProfile",
                                              "stackLevel": 1}],
        "DataTransfer": [{"vendorId": "com.example", "messageId": "ping", "data": "{}"}],
        "GetCompositeSchedule": [{"connectorId": 1, "duration": 3600, "chargingRateUnit": "A"}],
        "GetConfiguration": [{"key": ["HeartbeatInterval", "ConnectionTimeOut"]}],
        "GetDiagnostics": [{"location": url, "retries": 0, "retryInterval": 0,
                            "startTime": iso(-dt.timedelta(hours=1)), "stopTime": iso(dt.timedelta(0))}],
        "RemoteStartTransaction": [{"connectorId": 1, "idTag": "TAG1"},
                                   {"connectorId": 1, "idTag": "TAG1", "chargingProfile": tx_profile}],
        "RemoteStopTransaction": [{"transactionId": 1}],
        "ReserveNow": [{"connectorId": 1, "expiryDate": iso(dt.timedelta(hours=1)), "idTag": "TAG1",
                        "reservationId": 1}],
        "SendLocalList": [{"listVersion": 1, "updateType": "Full", "localAuthorizationList": [
            {"idTag": "TAG1", "idTagInfo": {"status": "Accepted", "expiryDate": iso(dt.timedelta(days=1)),
                                            "parentIdTag": "GROUP"}}, {"idTag": "TAG2"}]}],
        "SetChargingProfile": [{"connectorId": 1, "csChargingProfiles": tx_default},
                               {"connectorId": 0, "csChargingProfiles": cp_max},
                               {"connectorId": 1, "csChargingProfiles": {**tx_profile, "transactionId": 1}}],
        "TriggerMessage": [{"requestedMessage": "StatusNotification", "connectorId": 1}],
        "UnlockConnector": [{"connectorId": 1}],
        "UpdateFirmware": [{"location": url, "retrieveDate": iso(dt.timedelta(days=1)), "retries": 0,
                            "retryInterval": 0}],
        "DeleteCertificate": [{"certificateHashData": {"hashAlgorithm": "SHA256", "issuerNameHash": "ab" * 32,
                                                       "issuerKeyHash": "cd" * 32, "serialNumber": "1F"}}],
        "ExtendedTriggerMessage": [{"requestedMessage": "StatusNotification", "connectorId": 1}],
        "GetInstalledCertificateIds": [{"certificateType": "CentralSystemRootCertificate"}],
        "GetLog": [{"logType": "SecurityLog", "requestId": 1, "retries": 0, "retryInterval": 0,
                    "log": {"remoteLocation": url, "oldestTimestamp": iso(-dt.timedelta(days=1)),
                            "latestTimestamp": iso(dt.timedelta(0))}}],
        "SignedUpdateFirmware": [{"requestId": 1, "retries": 0, "retryInterval": 0, "firmware": {
            "location": url, "retrieveDateTime": iso(dt.timedelta(days=1)),
            "signingCertificate": wrong_certificates()[0], "signature": "AAAA"}}],
    }
    return bases.get(action, [])
