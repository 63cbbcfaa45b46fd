"""OCPP configuration keys (OCPP 1.6 §9, Security Whitepaper §7): one table, typed, persisted.

Values travel as strings on the wire (GetConfiguration / ChangeConfiguration);
here each key has a kind (bool, int, csl, str), an access (R, RW, W), a
validator and a default. `[ocpp.config]` in the TOML file seeds first start
only; after that the persisted values (changed by ChangeConfiguration) win.

AuthorizationKey is write-only (Security WP §7.2): never returned by
GetConfiguration, never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

log = logging.getLogger("chargepoint.config")
# ChangeConfiguration keys and values are the central system's text (CiString50 / 500, any
# character): logged with %r so a CR/LF cannot forge a log line; AuthorizationKey values never.

Kind = Literal["bool", "int", "csl", "str"]
Access = Literal["R", "RW", "W"]

# Measurands the charger can report (from the meter and the pilot). A
# ChangeConfiguration naming any other measurand is Rejected (OCPP 1.6 §5.3).
SUPPORTED_MEASURANDS = (
    "Energy.Active.Import.Register",
    "Power.Active.Import",
    "Current.Import",
    "Voltage",
    "Current.Offered",
    "Power.Offered",
)
SUPPORTED_FEATURE_PROFILES = (
    "Core",
    "FirmwareManagement",
    "LocalAuthListManagement",
    "Reservation",
    "SmartCharging",
    "RemoteTrigger",
)
PHASE_ROTATIONS = ("NotApplicable", "Unknown", "RST", "RTS", "SRT", "STR", "TRS", "TSR")
# §9.1.17: "Where applicable, the Measurand is combined with the optional phase; for
# instance: Voltage.L1". The per-phase measurands and the phases (§7.30) they accept, as
# the index of the meter's phase. Voltage is measured line to neutral: ".L1" means L1-N.
PHASED_MEASURANDS: dict[str, dict[str, int]] = {
    "Current.Import": {"L1": 0, "L2": 1, "L3": 2},
    "Voltage": {"L1": 0, "L2": 1, "L3": 2, "L1-N": 0, "L2-N": 1, "L3-N": 2},
}

VALUE_MAX_LEN = 500  # KeyValue.value is CiString500 (OCPP 1.6 §7.29)


def split_phase(item: str) -> tuple[str, int | None]:
    """A configured measurand -> (measurand, phase index or None): "Voltage.L2" -> ("Voltage", 1)."""
    base, sep, phase = item.rpartition(".")
    if sep and base in PHASED_MEASURANDS and phase in PHASED_MEASURANDS[base]:
        return base, PHASED_MEASURANDS[base][phase]
    return item, None


MEASURAND_ITEMS = SUPPORTED_MEASURANDS + tuple(
    f"{measurand}.{phase}" for measurand, phases in PHASED_MEASURANDS.items() for phase in phases)


class KeyValueBackend(Protocol):
    """Persistence for the key store (chargepoint.store kv namespace)."""

    def kv_get(self, ns: str, key: str, default: Any = None) -> Any: ...

    def kv_put(self, ns: str, key: str, value: Any) -> None: ...


@dataclass(frozen=True)
class KeySpec:
    name: str
    kind: Kind
    access: Access
    default: str
    validate: Callable[[str], bool] | None = None
    reboot_required: bool = False
    # A key the daemon computes (NumberOfConnectors...): never persisted.
    derived: bool = False


def _is_int(text: str, minimum: int = 0, maximum: int = 2**31 - 1) -> bool:
    text = text.strip()
    if not text or not (text.isdigit() or (text[0] == "-" and text[1:].isdigit())):
        return False
    return minimum <= int(text) <= maximum


def _int_range(minimum: int, maximum: int = 2**31 - 1) -> Callable[[str], bool]:
    return lambda text: _is_int(text, minimum, maximum)


def _is_bool(text: str) -> bool:
    return text.strip().lower() in ("true", "false")


def split_csl(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _csl_of(allowed: Iterable[str], max_items: int, *, allow_empty: bool = True) -> Callable[[str], bool]:
    allowed_set = frozenset(allowed)

    def check(text: str) -> bool:
        items = split_csl(text)
        if not items:
            return allow_empty and text.strip() == ""
        if len(items) > max_items or len(set(items)) != len(items):
            return False
        return all(item in allowed_set for item in items)

    return check


def _phase_rotation(text: str) -> bool:
    # "0.RST, 1.RST, 2.RTS" (OCPP 1.6 §9.1.7)
    for item in split_csl(text):
        index, sep, rotation = item.partition(".")
        if not sep or not index.isdigit() or rotation not in PHASE_ROTATIONS:
            return False
    return True


def _authorization_key(text: str) -> bool:
    # Security WP §7.2: at least 16 bytes; 20 bytes as up to 40 hex digits.
    return 16 <= len(text) <= 40 and text.isprintable() and " " not in text


MEASURAND_LIST_MAX = 8


def default_key_table(*, number_of_connectors: int) -> list[KeySpec]:
    """Every key the charger supports, by feature profile (OCPP 1.6 §9.1-9.4, Security WP §7)."""
    measurands = _csl_of(MEASURAND_ITEMS, MEASURAND_LIST_MAX)
    return [
        # --- Core (§9.1)
        KeySpec("AllowOfflineTxForUnknownId", "bool", "RW", "false", _is_bool),
        KeySpec("AuthorizationCacheEnabled", "bool", "RW", "true", _is_bool),
        KeySpec("AuthorizeRemoteTxRequests", "bool", "RW", "true", _is_bool),
        KeySpec("ClockAlignedDataInterval", "int", "RW", "0", _int_range(0, 86400)),
        KeySpec("ConnectionTimeOut", "int", "RW", "60", _int_range(1, 3600)),
        KeySpec("ConnectorPhaseRotation", "csl", "RW",
                ", ".join(f"{i}.RST" for i in range(1, number_of_connectors + 1)), _phase_rotation),
        KeySpec("ConnectorPhaseRotationMaxLength", "int", "R", str(number_of_connectors + 1)),
        KeySpec("GetConfigurationMaxKeys", "int", "R", "100"),
        KeySpec("HeartbeatInterval", "int", "RW", "300", _int_range(0, 86400)),
        KeySpec("LocalAuthorizeOffline", "bool", "RW", "true", _is_bool),
        KeySpec("LocalPreAuthorize", "bool", "RW", "false", _is_bool),
        KeySpec("MaxEnergyOnInvalidId", "int", "RW", "0", _int_range(0)),
        KeySpec("MeterValuesAlignedData", "csl", "RW", "Energy.Active.Import.Register", measurands),
        KeySpec("MeterValuesAlignedDataMaxLength", "int", "R", str(MEASURAND_LIST_MAX)),
        KeySpec("MeterValuesSampledData", "csl", "RW",
                "Energy.Active.Import.Register,Power.Active.Import", measurands),
        KeySpec("MeterValuesSampledDataMaxLength", "int", "R", str(MEASURAND_LIST_MAX)),
        KeySpec("MeterValueSampleInterval", "int", "RW", "60", _int_range(0, 86400)),
        KeySpec("MinimumStatusDuration", "int", "RW", "0", _int_range(0, 3600)),
        KeySpec("NumberOfConnectors", "int", "R", str(number_of_connectors), derived=True),
        KeySpec("ResetRetries", "int", "RW", "3", _int_range(0, 100)),
        KeySpec("StopTransactionOnEVSideDisconnect", "bool", "RW", "true", _is_bool),
        KeySpec("StopTransactionOnInvalidId", "bool", "RW", "true", _is_bool),
        KeySpec("StopTxnAlignedData", "csl", "RW", "", measurands),
        KeySpec("StopTxnAlignedDataMaxLength", "int", "R", str(MEASURAND_LIST_MAX)),
        KeySpec("StopTxnSampledData", "csl", "RW", "", measurands),
        KeySpec("StopTxnSampledDataMaxLength", "int", "R", str(MEASURAND_LIST_MAX)),
        # Errata 3.91: how many meter values StopTransaction.transactionData may carry.
        KeySpec("StopTransactionMaxMeterValues", "int", "R", "100"),
        # Errata 3.90: file transfer protocols for firmware and diagnostics.
        KeySpec("SupportedFileTransferProtocols", "csl", "R", "HTTP,HTTPS"),
        KeySpec("SupportedFeatureProfiles", "csl", "R", ",".join(SUPPORTED_FEATURE_PROFILES), derived=True),
        KeySpec("SupportedFeatureProfilesMaxLength", "int", "R", str(len(SUPPORTED_FEATURE_PROFILES))),
        KeySpec("TransactionMessageAttempts", "int", "RW", "5", _int_range(0, 100)),
        KeySpec("TransactionMessageRetryInterval", "int", "RW", "30", _int_range(0, 86400)),
        KeySpec("UnlockConnectorOnEVSideDisconnect", "bool", "RW", "true", _is_bool),
        KeySpec("WebSocketPingInterval", "int", "RW", "30", _int_range(0, 86400)),
        # --- Local Auth List Management (§9.2)
        KeySpec("LocalAuthListEnabled", "bool", "RW", "true", _is_bool),
        KeySpec("LocalAuthListMaxLength", "int", "R", "1000"),
        KeySpec("SendLocalListMaxLength", "int", "R", "250"),
        # --- Reservation (§9.3)
        KeySpec("ReserveConnectorZeroSupported", "bool", "R", "true"),
        # --- Smart Charging (§9.4)
        KeySpec("ChargeProfileMaxStackLevel", "int", "R", "10"),
        KeySpec("ChargingScheduleAllowedChargingRateUnit", "csl", "R", "Current,Power"),
        KeySpec("ChargingScheduleMaxPeriods", "int", "R", "48"),
        KeySpec("ConnectorSwitch3to1PhaseSupported", "bool", "R", "false"),
        KeySpec("MaxChargingProfilesInstalled", "int", "R", "20"),
        # --- Security whitepaper (§7)
        KeySpec("AdditionalRootCertificateCheck", "bool", "R", "false"),
        KeySpec("AuthorizationKey", "str", "W", "", _authorization_key),
        KeySpec("CertificateSignedMaxChainSize", "int", "R", "10000"),
        KeySpec("CertificateStoreMaxLength", "int", "R", "10"),
        KeySpec("CpoName", "str", "RW", "", lambda text: len(text) <= 100),
        KeySpec("SecurityProfile", "int", "RW", "2", _int_range(0, 3)),
    ]


def _canonical(spec: KeySpec, text: str) -> str:
    text = text.strip()
    if spec.kind == "bool":
        return text.lower()
    if spec.kind == "int":
        return str(int(text))
    if spec.kind == "csl":
        return ",".join(split_csl(text))
    return text


ChangeListener = Callable[[str, str], None]


class ConfigurationStore:
    """The charger's OCPP configuration keys."""

    NAMESPACE = "ocpp_config"

    def __init__(self, backend: KeyValueBackend, specs: Iterable[KeySpec], *,
                 initial: dict[str, Any] | None = None) -> None:
        self._backend = backend
        self._specs = {spec.name: spec for spec in specs}
        self._values: dict[str, str] = {}
        self._listeners: list[ChangeListener] = []
        # Extra hook for keys whose acceptance depends on live state
        # (SecurityProfile prerequisites, Security WP A05.FR.02-04).
        self._guards: dict[str, Callable[[str, str], str | None]] = {}
        seeded = bool(backend.kv_get(self.NAMESPACE, "__seeded__", False))
        for name, spec in self._specs.items():
            stored = None if spec.derived else backend.kv_get(self.NAMESPACE, name)
            if isinstance(stored, str) and (spec.validate is None or spec.validate(stored)):
                self._values[name] = stored
            else:
                self._values[name] = spec.default
        if not seeded:
            for name, value in (initial or {}).items():
                self._seed(name, value)
            backend.kv_put(self.NAMESPACE, "__seeded__", True)

    def _seed(self, name: str, value: Any) -> None:
        from chargepoint.config import ConfigError

        spec = self._specs.get(name)
        if spec is None:
            raise ConfigError(f"ocpp.config.{name}", "unknown OCPP configuration key")
        text = _to_text(value)
        if spec.validate is not None and not spec.validate(text):
            raise ConfigError(f"ocpp.config.{name}", f"invalid value for a {spec.kind} key")
        self._values[name] = _canonical(spec, text)
        if not spec.derived:
            self._backend.kv_put(self.NAMESPACE, name, self._values[name])

    # ----------------------------------------------------------------- typed reads

    def spec(self, name: str) -> KeySpec | None:
        return self._specs.get(name)

    def raw(self, name: str) -> str:
        return self._values[name]

    def get_bool(self, name: str) -> bool:
        return self._values[name] == "true"

    def get_int(self, name: str) -> int:
        return int(self._values[name])

    def get_csl(self, name: str) -> list[str]:
        return split_csl(self._values[name])

    def has(self, name: str) -> bool:
        return name in self._specs

    # ----------------------------------------------------------------- internal writes

    def set_internal(self, name: str, value: Any) -> None:
        """Set a key from inside the charger (e.g. the password from the TOML file)."""
        spec = self._specs[name]
        text = _canonical(spec, _to_text(value))
        self._values[name] = text
        if not spec.derived:
            self._backend.kv_put(self.NAMESPACE, name, text)

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def add_guard(self, name: str, guard: Callable[[str, str], str | None]) -> None:
        """guard(old, new) returns None to allow, or a status ("Rejected") to refuse."""
        self._guards[name] = guard

    # ----------------------------------------------------------------- OCPP operations

    def get_configuration(self, keys: list[str] | None) -> dict[str, Any]:
        """GetConfiguration.conf payload (OCPP 1.6 §5.8, §6.24)."""
        configuration: list[dict[str, Any]] = []
        unknown: list[str] = []
        names = list(self._specs) if not keys else keys
        for name in names:
            spec = self._specs.get(name)
            if spec is None:
                unknown.append(name)
                continue
            if spec.access == "W":
                # Write-only keys (AuthorizationKey) are never revealed (Security WP §7.2).
                # Listed by name they are reported unknown rather than leak their presence value.
                if keys:
                    unknown.append(name)
                continue
            configuration.append({"key": name, "readonly": spec.access == "R",
                                  "value": self._values[name][:VALUE_MAX_LEN]})
        payload: dict[str, Any] = {}
        if configuration or not unknown:
            payload["configurationKey"] = configuration
        if unknown:
            payload["unknownKey"] = unknown
        return payload

    def change_configuration(self, name: str, value: str) -> str:
        """ChangeConfiguration.conf status (OCPP 1.6 §5.3)."""
        spec = self._specs.get(name)
        if spec is None:
            return "NotSupported"
        if spec.access == "R":
            return "Rejected"
        if spec.validate is not None and not spec.validate(value):
            log.info("ChangeConfiguration %r rejected: invalid value", name)
            return "Rejected"
        new = _canonical(spec, value)
        old = self._values[name]
        guard = self._guards.get(name)
        if guard is not None:
            refusal = guard(old, new)
            if refusal is not None:
                return refusal
        self._values[name] = new
        self._backend.kv_put(self.NAMESPACE, name, new)
        if spec.access == "W":
            log.info("configuration key %r changed (value not logged)", name)
        else:
            log.info("configuration key %r changed: %r -> %r", name, old, new)
        for listener in list(self._listeners):
            try:
                listener(name, new)
            except Exception:  # a listener's bug must not break the answer
                log.exception("listener for %r failed", name)
        return "RebootRequired" if spec.reboot_required else "Accepted"


def _to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
