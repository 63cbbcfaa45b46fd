"""The daemon's TOML configuration (interfaces.md section 3), validated up front.

Every problem is reported as a ConfigError naming the dotted key and the reason,
so `chargepoint check-config` and `chargepoint run` can print one clear line and
exit with status 2.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_CONFIG_PATH = Path("/etc/chargepoint/chargepoint.toml")
DEFAULT_CONTROL_SOCKET = Path("/run/chargepoint/control.sock")

# Security whitepaper 1.3.2: the AuthorizationKey (Basic auth password) is
# 16 to 20 bytes for security profile 2 ... OCPP tools send it as the string.
PASSWORD_MIN_LEN = 16
PASSWORD_MAX_LEN = 40

KNOWN_METER_DRIVERS = ("sdm630", "sdm120", "sdm72", "abb_b23", "em340")


class ConfigError(Exception):
    """A configuration problem: `key` is the dotted TOML key, `reason` says why."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class OcppSettings:
    url: str
    charge_point_id: str
    password: str | None
    initial_config: dict[str, Any]
    vendor: str = "OpenEVSE-Py"
    model: str = "CP-Linux"
    serial_number: str | None = None
    firmware_version: str = "0.1.0"
    # 2 = Basic auth over TLS; 3 = client certificate (TLS mutual auth).
    security_profile: int = 2
    call_timeout_s: float = 30.0

    @property
    def endpoint_url(self) -> str:
        """OCPP-J 3.1.1: the charge point id is the last path segment, percent-encoded."""
        from urllib.parse import quote

        return self.url.rstrip("/") + "/" + quote(self.charge_point_id, safe="")


@dataclass(frozen=True)
class TlsSettings:
    ca_file: Path | None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    # Allow TLS 1.3 next to the ELB TLS 1.2 suites (the ELB policy itself is 1.2 only).
    allow_tls13: bool = True
    proxy: str | None = None


@dataclass(frozen=True)
class NtpSettings:
    servers: tuple[tuple[str, int], ...]
    set_clock: bool = True
    timeout_s: float = 2.0
    # A clock stepped when |offset| exceeds this; smaller offsets are only recorded.
    step_threshold_s: float = 0.5
    # Re-query while connected: the pre-handshake sync alone leaves a charger that stays
    # connected for months on its own oscillator (50 ppm is 4 s a day). 0 disables.
    resync_interval_s: float = 6 * 3600.0


@dataclass(frozen=True)
class StorageSettings:
    state_dir: Path
    # Transaction messages kept while offline before periodic MeterValues are thinned
    # (None: the store's default, days of 10 s samples; see chargepoint/store/queue.py).
    queue_cap: int | None = None


@dataclass(frozen=True)
class ControlSettings:
    socket: Path


@dataclass(frozen=True)
class HalSettings:
    backend: str = "sim"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MeterSettings:
    driver: str
    transport: str  # "tcp" | "rtu"
    host: str = "127.0.0.1"
    port: int = 502
    device: str | None = None
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    unit_id: int = 1
    timeout_s: float = 0.5
    retries: int = 2


@dataclass(frozen=True)
class ConnectorSettings:
    connector_id: int
    max_current_a: float
    phases: int
    meter: MeterSettings | None = None


@dataclass(frozen=True)
class AuthorizationSettings:
    free_vend_id_tag: str | None = None


@dataclass(frozen=True)
class SmartChargingSettings:
    # Limit applied when the central system has been unreachable this long
    # (None: keep the last schedule). Field reports ask for this fail-safe.
    failsafe_current_a: float | None = None
    failsafe_after_s: float = 600.0
    # Pilot changes that raise the current are rate-limited (protects the car);
    # changes that lower it are applied at once.
    pilot_raise_min_interval_s: float = 5.0


@dataclass(frozen=True)
class NetworkSettings:
    # Links in order of preference (failover order), e.g. ["wifi", "gsm"].
    links: tuple[str, ...] = ("wifi", "gsm")


@dataclass(frozen=True)
class Settings:
    source: Path | None
    ocpp: OcppSettings
    tls: TlsSettings
    ntp: NtpSettings
    storage: StorageSettings
    control: ControlSettings
    hal: HalSettings
    connectors: tuple[ConnectorSettings, ...]
    authorization: AuthorizationSettings
    smart_charging: SmartChargingSettings
    network: NetworkSettings
    log_level: str = "INFO"


# --------------------------------------------------------------------------- helpers


def _table(doc: dict[str, Any], key: str, *, required: bool = False) -> dict[str, Any]:
    value = doc.get(key)
    if value is None:
        if required:
            raise ConfigError(key, "missing table")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table")
    return value


def _str(table: dict[str, Any], prefix: str, key: str, default: str | None = None,
         *, required: bool = False) -> str | None:
    value = table.get(key, default)
    if value is None:
        if required:
            raise ConfigError(f"{prefix}.{key}", "missing")
        return None
    if not isinstance(value, str) or (required and not value):
        raise ConfigError(f"{prefix}.{key}", "must be a non-empty string")
    return value


def _num(table: dict[str, Any], prefix: str, key: str, default: float | None,
         *, minimum: float | None = None, maximum: float | None = None,
         integer: bool = False) -> float | None:
    value = table.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{prefix}.{key}", "must be a number")
    if integer and not isinstance(value, int):
        raise ConfigError(f"{prefix}.{key}", "must be an integer")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{prefix}.{key}", f"must be >= {minimum:g}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{prefix}.{key}", f"must be <= {maximum:g}")
    return value


def _bool(table: dict[str, Any], prefix: str, key: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{prefix}.{key}", "must be true or false")
    return value


def _path(base: Path | None, value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def _host_port(prefix: str, value: Any, default_port: int) -> tuple[str, int]:
    if not isinstance(value, str) or not value:
        raise ConfigError(prefix, "each server must be a non-empty \"host\" or \"host:port\" string")
    host, sep, port_text = value.rpartition(":")
    if sep and host and not host.endswith("]") and ":" in host:
        # A bare IPv6 address without brackets: no port given.
        return value, default_port
    if not sep:
        return value, default_port
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(prefix, f"bad port in {value!r}") from None
    if not 0 < port < 65536:
        raise ConfigError(prefix, f"port out of range in {value!r}")
    return host, port


def read_secret_file(key: str, path: Path) -> str:
    """Read a secret that must be readable by the daemon's user only."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(key, f"{path} is accessible by group or others (chmod 600 it)")
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None


# --------------------------------------------------------------------------- sections


def _parse_ocpp(doc: dict[str, Any], base: Path | None) -> OcppSettings:
    t = _table(doc, "ocpp", required=True)
    url = _str(t, "ocpp", "url", required=True)
    assert url is not None
    parts = urlsplit(url)
    if parts.scheme == "ws":
        raise ConfigError("ocpp.url", "plain ws:// is not allowed; the charger only connects over wss://")
    if parts.scheme != "wss":
        raise ConfigError("ocpp.url", "must start with wss://")
    if not parts.hostname:
        raise ConfigError("ocpp.url", "has no host name")
    if parts.username or parts.password:
        raise ConfigError("ocpp.url", "must not carry credentials; use ocpp.password")
    cp_id = _str(t, "ocpp", "charge_point_id", required=True)
    assert cp_id is not None
    # OCPP 1.6 CiString20 identity (BootNotification uses it in the URL; ids are
    # compared by central systems as given).
    if len(cp_id) > 48 or any(ch.isspace() for ch in cp_id):
        raise ConfigError("ocpp.charge_point_id", "at most 48 characters, no white space")
    password = _str(t, "ocpp", "password")
    password_file = _str(t, "ocpp", "password_file")
    if password is not None and password_file is not None:
        raise ConfigError("ocpp.password", "give password or password_file, not both")
    if password_file is not None:
        password = read_secret_file("ocpp.password_file", _path(base, password_file))
    security_profile = int(_num(t, "ocpp", "security_profile", 2, minimum=2, maximum=3,
                                integer=True) or 2)
    if password is not None and not PASSWORD_MIN_LEN <= len(password) <= PASSWORD_MAX_LEN:
        raise ConfigError("ocpp.password",
                          f"must be {PASSWORD_MIN_LEN} to {PASSWORD_MAX_LEN} characters "
                          "(OCPP security profile 2 AuthorizationKey)")
    if security_profile == 2 and password is None:
        raise ConfigError("ocpp.password", "missing (security profile 2 needs HTTP Basic auth)")
    initial = _table(t, "config")
    for key, value in initial.items():
        if not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"ocpp.config.{key}", "must be a string, number or boolean")
    return OcppSettings(
        url=url,
        charge_point_id=cp_id,
        password=password,
        initial_config=dict(initial),
        vendor=_str(t, "ocpp", "vendor", "OpenEVSE-Py") or "OpenEVSE-Py",
        model=_str(t, "ocpp", "model", "CP-Linux") or "CP-Linux",
        serial_number=_str(t, "ocpp", "serial_number"),
        firmware_version=_str(t, "ocpp", "firmware_version", "0.1.0") or "0.1.0",
        security_profile=security_profile,
        call_timeout_s=float(_num(t, "ocpp", "call_timeout_s", 30.0, minimum=1) or 30.0),
    )


def _parse_tls(doc: dict[str, Any], base: Path | None, security_profile: int) -> TlsSettings:
    t = _table(doc, "tls")
    ca = _str(t, "tls", "ca_file", "/etc/ssl/certs/ca-certificates.crt")
    ca_path = _path(base, ca) if ca else None
    cert = _str(t, "tls", "client_cert_file")
    key = _str(t, "tls", "client_key_file")
    if (cert is None) != (key is None):
        raise ConfigError("tls.client_key_file" if key is None else "tls.client_cert_file",
                          "client_cert_file and client_key_file go together")
    if security_profile == 3 and cert is None:
        raise ConfigError("tls.client_cert_file", "missing (security profile 3 needs a client certificate)")
    key_path = _path(base, key) if key else None
    if key_path is not None and key_path.exists() and key_path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError("tls.client_key_file", f"{key_path} is accessible by group or others (chmod 600 it)")
    return TlsSettings(
        ca_file=ca_path,
        client_cert_file=_path(base, cert) if cert else None,
        client_key_file=key_path,
        allow_tls13=_bool(t, "tls", "allow_tls13", True),
        proxy=_str(t, "tls", "proxy"),
    )


def _parse_ntp(doc: dict[str, Any]) -> NtpSettings:
    t = _table(doc, "ntp")
    servers_raw = t.get("servers", ["pool.ntp.org"])
    if not isinstance(servers_raw, list) or not servers_raw:
        raise ConfigError("ntp.servers", "must be a non-empty list of \"host\" or \"host:port\"")
    servers = tuple(_host_port("ntp.servers", s, 123) for s in servers_raw)
    return NtpSettings(
        servers=servers,
        set_clock=_bool(t, "ntp", "set_clock", True),
        timeout_s=float(_num(t, "ntp", "timeout_s", 2.0, minimum=0.05, maximum=30) or 2.0),
        step_threshold_s=float(_num(t, "ntp", "step_threshold_s", 0.5, minimum=0) or 0.5),
        resync_interval_s=_resync_interval(t),
    )


# Public pools ask clients not to poll faster than NTP's minimum poll, 2^6 s (RFC 5905 §7.3).
NTP_MIN_RESYNC_INTERVAL_S = 64.0


def _resync_interval(t: dict[str, Any]) -> float:
    value = float(_num(t, "ntp", "resync_interval_s", 6 * 3600.0, minimum=0) or 0.0)
    if 0 < value < NTP_MIN_RESYNC_INTERVAL_S:
        raise ConfigError("ntp.resync_interval_s",
                          f"must be 0 (off) or at least {NTP_MIN_RESYNC_INTERVAL_S:.0f} s (RFC 5905 minimum poll)")
    return value


def _parse_meter(t: dict[str, Any], prefix: str) -> MeterSettings:
    driver = _str(t, prefix, "driver", required=True)
    if driver not in KNOWN_METER_DRIVERS:
        raise ConfigError(f"{prefix}.driver", f"unknown meter {driver!r} (known: {', '.join(KNOWN_METER_DRIVERS)})")
    transport = _str(t, prefix, "transport", "tcp")
    if transport not in ("tcp", "rtu"):
        raise ConfigError(f"{prefix}.transport", "must be \"tcp\" or \"rtu\"")
    device = _str(t, prefix, "device")
    if transport == "rtu" and not device:
        raise ConfigError(f"{prefix}.device", "missing (an RTU meter needs a serial device)")
    parity = _str(t, prefix, "parity", "N") or "N"
    if parity not in ("N", "E", "O"):
        raise ConfigError(f"{prefix}.parity", "must be \"N\", \"E\" or \"O\"")
    return MeterSettings(
        driver=driver or "",
        transport=transport or "tcp",
        host=_str(t, prefix, "host", "127.0.0.1") or "127.0.0.1",
        port=int(_num(t, prefix, "port", 502, minimum=1, maximum=65535, integer=True) or 502),
        device=device,
        baudrate=int(_num(t, prefix, "baudrate", 9600, minimum=1200, maximum=115200, integer=True) or 9600),
        parity=parity,
        stopbits=int(_num(t, prefix, "stopbits", 1, minimum=1, maximum=2, integer=True) or 1),
        unit_id=int(_num(t, prefix, "unit_id", 1, minimum=0, maximum=247, integer=True) or 0),
        timeout_s=float(_num(t, prefix, "timeout_s", 0.5, minimum=0.01, maximum=10) or 0.5),
        retries=int(_num(t, prefix, "retries", 2, minimum=0, maximum=10, integer=True) or 0),
    )


def _parse_connectors(doc: dict[str, Any], default_meter: MeterSettings | None) -> tuple[ConnectorSettings, ...]:
    raw = doc.get("connector")
    if raw is None:
        raw = [{"max_current_a": 32, "phases": 3}]
    if not isinstance(raw, list) or not raw:
        raise ConfigError("connector", "must be one or more [[connector]] tables")
    out = []
    for index, t in enumerate(raw):
        prefix = f"connector[{index}]"
        if not isinstance(t, dict):
            raise ConfigError(prefix, "must be a table")
        cid = int(_num(t, prefix, "id", index + 1, integer=True) or 0)
        if cid != index + 1:
            raise ConfigError(f"{prefix}.id", f"connectors are numbered 1..N in order; expected {index + 1}")
        max_a = _num(t, prefix, "max_current_a", 32, minimum=6, maximum=80)
        phases = _num(t, prefix, "phases", 3, integer=True)
        if phases not in (1, 3):
            raise ConfigError(f"{prefix}.phases", "must be 1 or 3")
        meter = _parse_meter(_table(t, "meter"), f"{prefix}.meter") if "meter" in t else None
        if meter is None and default_meter is not None and index == 0:
            meter = default_meter
        out.append(ConnectorSettings(cid, float(max_a or 32), int(phases or 3), meter))
    if default_meter is not None and len(out) > 1 and all(c.meter is None for c in out[1:]):
        # One shared [meter] table serves connector 1 only; say so rather than guess.
        pass
    return tuple(out)


def parse_settings(doc: dict[str, Any], source: Path | None = None) -> Settings:
    base = source.parent if source is not None else None
    known = {"ocpp", "tls", "ntp", "storage", "control", "hal", "meter", "connector",
             "authorization", "smart_charging", "network", "logging"}
    for key in doc:
        if key not in known:
            raise ConfigError(key, "unknown table or key")
    ocpp = _parse_ocpp(doc, base)
    tls = _parse_tls(doc, base, ocpp.security_profile)
    ntp = _parse_ntp(doc)

    storage_t = _table(doc, "storage")
    state_dir = _path(base, _str(storage_t, "storage", "state_dir", "/var/lib/chargepoint") or "")
    queue_cap = _num(storage_t, "storage", "queue_cap", None, minimum=4, maximum=10_000_000, integer=True)
    control_t = _table(doc, "control")
    socket_path = _path(base, _str(control_t, "control", "socket", str(DEFAULT_CONTROL_SOCKET)) or "")

    hal_t = _table(doc, "hal")
    backend = _str(hal_t, "hal", "backend", "sim") or "sim"
    if backend not in ("sim", "linux"):
        raise ConfigError("hal.backend", "must be \"sim\" or \"linux\"")
    hal = HalSettings(backend=backend, options={k: v for k, v in hal_t.items() if k != "backend"})

    meter = _parse_meter(doc["meter"], "meter") if "meter" in doc else None
    if meter is not None and not isinstance(doc["meter"], dict):
        raise ConfigError("meter", "must be a table")
    connectors = _parse_connectors(doc, meter)

    auth_t = _table(doc, "authorization")
    free_vend = _str(auth_t, "authorization", "free_vend_id_tag")
    if free_vend is not None and len(free_vend) > 20:
        raise ConfigError("authorization.free_vend_id_tag", "an idTag is at most 20 characters (CiString20)")

    sc_t = _table(doc, "smart_charging")
    smart = SmartChargingSettings(
        failsafe_current_a=_num(sc_t, "smart_charging", "failsafe_current_a", None, minimum=0, maximum=80),
        failsafe_after_s=float(_num(sc_t, "smart_charging", "failsafe_after_s", 600.0, minimum=1) or 600.0),
        pilot_raise_min_interval_s=float(
            _num(sc_t, "smart_charging", "pilot_raise_min_interval_s", 5.0, minimum=0, maximum=60) or 0.0),
    )
    net_t = _table(doc, "network")
    links = net_t.get("links", ["wifi", "gsm"])
    if not isinstance(links, list) or not all(isinstance(x, str) and x for x in links):
        raise ConfigError("network.links", "must be a list of link names")

    log_t = _table(doc, "logging")
    level = (_str(log_t, "logging", "level", "INFO") or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("logging.level", "must be DEBUG, INFO, WARNING or ERROR")

    return Settings(
        source=source,
        ocpp=ocpp,
        tls=tls,
        ntp=ntp,
        storage=StorageSettings(state_dir=state_dir, queue_cap=None if queue_cap is None else int(queue_cap)),
        control=ControlSettings(socket=socket_path),
        hal=hal,
        connectors=connectors,
        authorization=AuthorizationSettings(free_vend_id_tag=free_vend),
        smart_charging=smart,
        network=NetworkSettings(links=tuple(links)),
        log_level=level,
    )


def load_settings(path: Path | str) -> Settings:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), "configuration file not found") from None
    except PermissionError:
        raise ConfigError(str(path), "configuration file not readable") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    return parse_settings(doc, path)


def check_state_dir(path: Path) -> None:
    """Create the state directory (mode 0700: it holds secrets and the store)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise ConfigError("storage.state_dir", f"cannot use {path}: {exc.strerror}") from None
