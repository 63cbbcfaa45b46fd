"""Firmware Management: UpdateFirmware / FirmwareStatusNotification and GetDiagnostics /
DiagnosticsStatusNotification (OCPP 1.6 §4.4, §4.5, §5.9, §5.19, §8; errata 3.12, 3.31,
3.47-3.50, 3.63, 3.90).

One firmware update at a time, persisted in the store (kv namespace "firmware") at every
step so a power cut or a restart resumes it where it was:

    scheduled --retrieveDate--> downloading --> downloaded --(no transaction running)-->
    installing --> rebooting --(restart)--> Installed reported, FirmwareUpdated event

- Download over http(s) (or ftp, urllib's own client) in a worker thread into
  `state_dir/firmware/`, written to a ".part" file and renamed when complete;
  `retries` more attempts after the first (errata 3.50 wording), `retryInterval`
  apart. Never through a proxy from the environment (field-notes §1).
- Installation waits until no transaction runs (errata 3.49, Security WP L01.FR.06);
  while it waits, every connector not in use is made Unavailable (L01.FR.07).
- "Installing" this product's firmware is a pluggable step: `FirmwareService.installer`
  (default: the module-level `INSTALLER`, i.e. `default_installer`), a function of the
  downloaded file that returns the new version string or raises InstallError. The
  default checks that the file is a gzip'd tar (.tar.gz/.tgz) or a wheel (.whl) and
  takes the version from the file name ("chargepoint-1.2.0.tar.gz" -> "chargepoint-1.2.0");
  a real image installer (A/B partition, package manager) replaces it. The version is
  committed together with the "rebooting" phase, then the daemon restarts
  (`app.request_stop(restart=True)`) and the new process reports it in BootNotification
  and sends FirmwareStatusNotification Installed (errata 3.47: report Installed after
  the reboot, once the new firmware runs and is connected).
- Status notifications carry no timestamp; the latest one waits in a small persisted
  outbox until the central system confirmed it, so a status reached while offline, or
  across the reboot (field-notes §6), is delivered after the next (re)connection.
  TriggerMessage(FirmwareStatusNotification) answers the current status while an update
  is in progress, Idle otherwise (§4.5).

The same engine runs the Security Whitepaper's SignedUpdateFirmware (L01): jobs with
`signed=True` report SignedFirmwareStatusNotification with the requestId, and the
signature is checked after download by `app.security.verify_firmware(job, path)`
(services/security.py).

GetDiagnostics uploads one tar.gz (recent log lines from an in-memory ring buffer on
the "chargepoint" logger, INFO and above so never the DEBUG frame dumps; the `status`
snapshot; the configuration keys, which never include AuthorizationKey) by HTTP PUT
(POST when the server refuses PUT) to `location` + file name. The current password is
also scrubbed from the archive, in case some line ever carried it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import logging
import os
import re
import ssl
import threading
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from chargepoint.ocppj import schemas
from chargepoint.ocppj.session import OcppError, Reply

if TYPE_CHECKING:
    from chargepoint.app import ChargePointApp

log = logging.getLogger("chargepoint.firmware")
# Locations / URLs are the central system's text: logged with %r (after safe_url), so a CR/LF
# in one cannot forge a log line (one line per event, docs/ARCHITECTURE.md).

NS = "firmware"
DIAGNOSTICS_NS = "diagnostics"

# When UpdateFirmware / GetDiagnostics leave them out, the charger decides (§6.25, §6.55).
DEFAULT_RETRIES = 2
DEFAULT_RETRY_INTERVAL_S = 60.0
TRANSFER_TIMEOUT_S = 60.0
MAX_FIRMWARE_BYTES = 512 * 1024 * 1024
# A restart during installation re-runs it; an installer that kills the daemon every time
# must not loop forever.
MAX_INSTALL_ATTEMPTS = 3
# A scheduled retrieve / install time is a wall-clock time: besides our own clock steps
# (Clock.add_listener) the system clock may be stepped by something else, which has no event.
WALL_CLOCK_RECHECK_S = 5.0
# Without a transaction service to report stops, the installation re-checks this often
# whether the transactions it waits for have ended.
POLL_S = 2.0
# Once the last transaction has ended, its StopTransaction.req (queued) gets this long to reach
# the central system before the installation starts (no later than the old 2-s poll did).
STOP_DELIVERY_WAIT_S = 2.0
LOG_RING_CAPACITY = 5000

DOWNLOAD_SCHEMES = ("http", "https", "ftp")
UPLOAD_SCHEMES = ("http", "https")

# FirmwareStatus of OCPP 1.6 §7.25; the signed flow has more (Security WP §6.8).
PLAIN_STATUSES = frozenset(
    {"Downloaded", "DownloadFailed", "Downloading", "Idle", "InstallationFailed", "Installing", "Installed"})
# What a plain TriggerMessage reports for a signed job's intermediate states.
_PLAIN_EQUIVALENT = {
    "DownloadScheduled": "Idle", "DownloadPaused": "Downloading", "SignatureVerified": "Downloaded",
    "InstallScheduled": "Downloaded", "InstallRebooting": "Installing", "InvalidSignature": "InstallationFailed",
    "InstallVerificationFailed": "InstallationFailed",
}
END_STATUSES = frozenset(
    {"DownloadFailed", "InstallationFailed", "Installed", "InvalidSignature", "InstallVerificationFailed"})


# ---------------------------------------------------------------------- log ring buffer


@dataclass(frozen=True, slots=True)   # up to LOG_RING_CAPACITY of them live in memory
class LogLine:
    created_s: float     # system time of the record (time.time())
    level: str
    logger: str
    message: str


class LogRing(logging.Handler):
    """The last `capacity` log records of the "chargepoint" loggers, for diagnostics uploads."""

    def __init__(self, capacity: int = LOG_RING_CAPACITY, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._lines: deque[LogLine] = deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception:
            self.handleError(record)
            return
        self._lines.append(LogLine(record.created, record.levelname, record.name, message))

    def lines(self) -> list[LogLine]:
        return list(self._lines)


_log_ring: LogRing | None = None


def install_log_ring() -> LogRing:
    """The process-wide ring buffer, attached to the "chargepoint" logger once."""
    global _log_ring
    if _log_ring is None:
        _log_ring = LogRing()
        logging.getLogger("chargepoint").addHandler(_log_ring)
    return _log_ring


# ---------------------------------------------------------------------- pure helpers


def parse_datetime_s(text: str | None) -> float | None:
    """An OCPP dateTime as epoch seconds (UTC when no zone is given); None if absent or bad.
    A valid date-time beyond what datetime holds in UTC ("9999-12-31T23:59:59-01:00" is
    year 10000) is clamped by schemas.parse_date_time to datetime.max / min: a retrieveDate
    that far away is simply waited for. The result may lie just past datetime.max (the float
    rounds up), so never format it back with iso8601_s."""
    if not text:
        return None
    try:
        return schemas.parse_date_time(text).timestamp()
    except ValueError:
        return None


def iso8601_s(epoch_s: float) -> str:
    value = dt.datetime.fromtimestamp(epoch_s, dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def safe_url(url: str) -> str:
    """The URL without user:password (for the log)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:100] or "_"


def firmware_file_name(location: str) -> str:
    """The file name of a firmware URL ("firmware.bin" when the path names none)."""
    name = urlsplit(location).path.rsplit("/", 1)[-1]
    return safe_name(name) if name else "firmware.bin"


def version_from_file_name(name: str) -> str:
    """"chargepoint-1.2.0.tar.gz" -> "chargepoint-1.2.0" (also .tgz, .whl, any last suffix)."""
    for suffix in (".tar.gz", ".tgz", ".whl"):
        if name.endswith(suffix):
            return name[: -len(suffix)] or name
    return name.rsplit(".", 1)[0] or name


def upload_url(location: str, file_name: str) -> str:
    """Where to put the file: `location` is a directory (§6.25) unless it carries a query
    (a pre-signed URL names the object itself)."""
    parts = urlsplit(location)
    if parts.query:
        return location
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit(parts._replace(path=path + file_name))


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def tar_gz(members: dict[str, str], *, mtime_s: float) -> bytes:
    import tarfile  # only when an archive is made: not part of the idle daemon's memory

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(mtime_s)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def format_log_lines(lines: list[LogLine], *, offset_s: float, start_s: float | None = None,
                     stop_s: float | None = None) -> str:
    """Log lines in [start_s, stop_s] (wall time = record time + the clock offset)."""
    out: list[str] = []
    for line in lines:
        wall_s = line.created_s + offset_s
        if (start_s is not None and wall_s < start_s) or (stop_s is not None and wall_s > stop_s):
            continue
        out.append(f"{iso8601_s(wall_s)} {line.level:<7} {line.logger}: {line.message}")
    return "\n".join(out) + ("\n" if out else "")


# ---------------------------------------------------------------------- transfers (blocking: run in a thread)


class TransferError(Exception):
    """A download or upload that did not complete."""


def make_opener(ca_file: Path | None) -> urllib.request.OpenerDirector:
    """urllib without the environment's *_PROXY variables; https verified against `ca_file`
    (plus the system store when None)."""
    context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))


def download(url: str, dest: Path, *, opener: urllib.request.OpenerDirector, timeout_s: float = TRANSFER_TIMEOUT_S,
             max_bytes: int = MAX_FIRMWARE_BYTES, cancel: threading.Event | None = None) -> int:
    """Fetch `url` into `dest` (complete, fsynced, or not there at all). Returns the size."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in DOWNLOAD_SCHEMES:
        raise TransferError(f"unsupported protocol {scheme!r}")
    part = dest.with_name(dest.name + ".part")
    total = 0
    try:
        with opener.open(url, timeout=timeout_s) as response, open(part, "wb") as fh:
            while chunk := response.read(64 * 1024):
                if cancel is not None and cancel.is_set():
                    raise TransferError("cancelled")
                total += len(chunk)
                if total > max_bytes:
                    raise TransferError(f"larger than {max_bytes} bytes")
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(part, dest)
    except urllib.error.HTTPError as exc:
        raise TransferError(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, HTTPException, ValueError) as exc:
        raise TransferError(f"{type(exc).__name__}: {exc}") from None
    finally:
        with contextlib.suppress(OSError):
            part.unlink()
    return total


def upload(url: str, data: bytes, *, opener: urllib.request.OpenerDirector,
           timeout_s: float = TRANSFER_TIMEOUT_S, content_type: str = "application/octet-stream") -> None:
    """HTTP PUT `data` to `url`; POST when the server answers 405/501 to PUT."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in UPLOAD_SCHEMES:
        raise TransferError(f"unsupported protocol {scheme!r}")
    for method in ("PUT", "POST"):
        request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": content_type})
        try:
            with opener.open(request, timeout=timeout_s) as response:
                response.read()
            return
        except urllib.error.HTTPError as exc:
            if method == "PUT" and exc.code in (405, 501):
                continue
            raise TransferError(f"HTTP {exc.code} to {method}") from None
        except (urllib.error.URLError, OSError, HTTPException, ValueError) as exc:
            raise TransferError(f"{type(exc).__name__}: {exc}") from None
    raise TransferError("neither PUT nor POST accepted")


# ---------------------------------------------------------------------- installation


class InstallError(Exception):
    """The downloaded firmware could not be installed (InstallationFailed)."""


Installer = Callable[[Path], str]


def default_installer(path: Path) -> str:
    """Accepts a gzip'd tar or a wheel; returns the version named by the file."""
    import tarfile  # only when firmware is installed: not part of the idle daemon's memory
    import zipfile

    name = path.name
    if name.endswith(".whl"):
        if not zipfile.is_zipfile(path):
            raise InstallError("not a valid wheel (zip) file")
        with zipfile.ZipFile(path) as archive:
            if archive.testzip() is not None:
                raise InstallError("corrupt wheel")
    else:
        try:
            with tarfile.open(path, mode="r:gz") as archive:
                archive.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise InstallError(f"not a valid gzip'd tar: {exc}") from None
    return version_from_file_name(name)


INSTALLER: Installer = default_installer


# ---------------------------------------------------------------------- persisted status outbox


class StatusOutbox:
    """The latest status notification of one process (firmware, diagnostics, log upload),
    persisted until the central system confirmed it; re-sent after (re)registration."""

    def __init__(self, app: ChargePointApp, ns: str) -> None:
        self.app = app
        self.ns = ns
        self._lock = asyncio.Lock()
        app.registration.on_accepted(self._flush_soon)
        app.add_link_listener(self._on_link_state)

    def _on_link_state(self, state: str) -> None:
        if state == "connected":
            self._flush_soon()

    def _flush_soon(self) -> None:
        if self.app.store.kv_get(self.ns, "outbox") is not None:
            self.app.spawn(self.flush(), f"{self.ns}-outbox")

    def put(self, action: str, payload: dict[str, Any]) -> None:
        self.app.store.kv_put(self.ns, "outbox", {"action": action, "payload": payload})

    async def send(self, action: str, payload: dict[str, Any]) -> bool:
        self.put(action, payload)
        return await self.flush()

    async def flush(self) -> bool:
        """True when nothing is left to deliver."""
        async with self._lock:
            item = self.app.store.kv_get(self.ns, "outbox")
            if item is None:
                return True
            if not self.app.online:
                return False
            if await self.app.try_call(item["action"], item["payload"]) is None:
                return False
            if self.app.store.kv_get(self.ns, "outbox") == item:
                self.app.store.kv_delete(self.ns, "outbox")
            return True


# ---------------------------------------------------------------------- the service


@dataclass
class FirmwareJob:
    """One firmware update (UpdateFirmware, or SignedUpdateFirmware when `signed`)."""

    location: str
    retrieve_at_s: float                  # wall time after which we may download
    retries: int = DEFAULT_RETRIES
    retry_interval_s: float = DEFAULT_RETRY_INTERVAL_S
    signed: bool = False
    request_id: int | None = None
    install_at_s: float | None = None     # SignedUpdateFirmware installDateTime
    signing_certificate: str | None = None
    signature: str | None = None
    phase: str = "scheduled"              # scheduled, downloading, downloaded, installing, rebooting
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    install_attempts: int = 0

    @property
    def file_name(self) -> str:
        """Where the download goes, under state_dir/firmware/ (one directory per job: a
        cancelled job's late download can never land on a newer job's file)."""
        return f"{self.job_id}/{firmware_file_name(self.location)}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FirmwareJob:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class LogUpload:
    """What to upload where (GetDiagnostics, GetLog)."""

    location: str
    retries: int
    retry_interval_s: float
    start_s: float | None = None
    stop_s: float | None = None


def _preparing(controller: Any) -> bool:
    """Preparing (a user or a remote start waiting for the plug or an idTag): the §4.9 table
    has no Preparing -> Unavailable (B8), so such a connector is left until it is Available
    (B1, then A8) or in a transaction (which the installation waits for anyway)."""
    from chargepoint.evse.status import ChargePointStatus

    status = controller.status
    return status is not None and status.status == ChargePointStatus.PREPARING


class FirmwareService:
    def __init__(self, app: ChargePointApp) -> None:
        self.app = app
        self.dir = Path(app.settings.storage.state_dir) / "firmware"
        self.installer: Installer = INSTALLER
        self.log_ring = install_log_ring()
        self.outbox = StatusOutbox(app, NS)
        self._diagnostics_outbox = StatusOutbox(app, DIAGNOSTICS_NS)
        self._job_task: asyncio.Task[None] | None = None
        self._diagnostics_task: asyncio.Task[None] | None = None
        self._diagnostics_status: str | None = None      # "Uploading" while an upload runs
        self._unavailable: set[int] = set()              # connectors we made Unavailable (L01.FR.07)
        self._unavailable_wanted = False                 # waiting to install: idle connectors go Unavailable
        # A waiting update job is woken by a clock sync / step and by a transaction's end.
        self._wake = asyncio.Event()
        app.clock.add_listener(self._wake.set)
        transactions = app.transactions
        self._stops_notified = transactions is not None and hasattr(transactions, "add_listener")
        if self._stops_notified:
            transactions.add_listener(self._on_transaction_event)
        # A Preparing connector is made Unavailable only once it is Available (no B8, §4.9).
        app.add_connector_listener(self._on_connector_event)
        # Built on the first transfer: an SSL context with the CA bundle loaded costs memory
        # (~1 MB with a system bundle) for a feature most chargers use once a year.
        self._opener_built: urllib.request.OpenerDirector | None = None
        app.on("UpdateFirmware", self.on_update_firmware)
        app.on("GetDiagnostics", self.on_get_diagnostics)
        if app.trigger is not None:
            app.trigger.register("FirmwareStatusNotification", self._trigger_firmware_status)
            app.trigger.register("DiagnosticsStatusNotification", self._trigger_diagnostics_status)
        app.add_status_contributor(self._contribute)
        self._installed_job = self._take_installed_job()

    @property
    def _opener(self) -> urllib.request.OpenerDirector:
        if self._opener_built is None:
            self._opener_built = make_opener(self.app.settings.tls.ca_file)
        return self._opener_built

    # ------------------------------------------------------------------ state

    def _load_job(self) -> FirmwareJob | None:
        data = self.app.store.kv_get(NS, "job")
        if not isinstance(data, dict):
            return None
        try:
            return FirmwareJob.from_json(data)
        except TypeError:
            log.error("unreadable firmware job in the store: dropped")
            self.app.store.kv_delete(NS, "job")
            return None

    def _save_job(self, job: FirmwareJob) -> None:
        self.app.store.kv_put(NS, "job", job.to_json())

    @property
    def busy(self) -> bool:
        """A firmware update is in progress (not yet in an end state)."""
        job = self._load_job()
        return job is not None and job.phase != "rebooting"

    def last_status(self) -> dict[str, Any] | None:
        value = self.app.store.kv_get(NS, "last_status")
        return value if isinstance(value, dict) else None

    def _take_installed_job(self) -> FirmwareJob | None:
        """After the restart that activated new firmware: Installed goes into the outbox,
        before registration, so it is sent right after BootNotification is Accepted."""
        job = self._load_job()
        if job is None or job.phase != "rebooting":
            return None
        action, payload = self._status_message(job, "Installed")
        with self.app.store.transaction():
            self.outbox.put(action, payload)
            self._remember_status(job, "Installed")
            self.app.store.kv_delete(NS, "job")
        self._remove_file(job)
        log.info("firmware %s installed and running", self.app.firmware_version())
        return job

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        if self._installed_job is not None:
            self._installed_job = None
            self._security_event("FirmwareUpdated", f"firmware {self.app.firmware_version()} installed")
        job = self._load_job()
        self._remove_leftovers(keep=None if job is None else job.job_id)
        if job is not None and (self._job_task is None or self._job_task.done()):
            log.info("resuming firmware update (%s) from %r", job.phase, safe_url(job.location))
            self._job_task = self.app.spawn(self._execute(job), "firmware-update")

    def _remove_leftovers(self, keep: str | None) -> None:
        """Downloads of updates that ended or were cancelled (flash is not infinite)."""
        if not self.dir.is_dir():
            return
        for folder in self.dir.iterdir():
            if folder.name == keep or not folder.is_dir():
                continue
            for path in folder.iterdir():
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                folder.rmdir()

    def start_update(self, job: FirmwareJob) -> bool:
        """Start (or replace) the firmware update; True if an update in progress was cancelled."""
        cancelled = False
        if self._job_task is not None and not self._job_task.done():
            self._job_task.cancel()
            cancelled = True
        previous = self._load_job()
        if previous is not None and previous.phase != "rebooting":
            cancelled = True
            self._remove_file(previous)
        if cancelled:
            log.info("firmware update in progress cancelled by a new request")
        self._restore_availability()
        self._save_job(job)
        self._job_task = self.app.spawn(self._execute(job), "firmware-update")
        return cancelled

    # ------------------------------------------------------------------ OCPP handlers

    async def on_update_firmware(self, payload: dict[str, Any]) -> Reply:
        security = getattr(self.app, "security", None)
        if security is not None and security.requires_signed_firmware():
            # Security WP L01.FR.20: with secure firmware update in place, the unsigned
            # UpdateFirmware is refused with a CALLERROR NotSupported.
            raise OcppError("NotSupported", "this charge point only installs signed firmware (SignedUpdateFirmware)")
        retrieve_at_s = parse_datetime_s(payload.get("retrieveDate")) or self.app.clock.wall_s()
        job = FirmwareJob(
            location=payload["location"],
            retrieve_at_s=retrieve_at_s,
            retries=max(0, int(payload.get("retries", DEFAULT_RETRIES))),
            retry_interval_s=max(0.0, float(payload.get("retryInterval", DEFAULT_RETRY_INTERVAL_S))),
        )
        # The retrieveDate as received: iso8601_s(retrieve_at_s) raised ValueError ("year 10000
        # is out of range") for one clamped at datetime.max (found by the schema fuzz).
        log.info("UpdateFirmware: %r after %r", safe_url(job.location), payload.get("retrieveDate"))
        # The first FirmwareStatusNotification must follow the (empty) UpdateFirmware.conf.
        return Reply({}, after_sent=lambda: self._start_soon(job))

    def _start_soon(self, job: FirmwareJob) -> None:
        self.start_update(job)

    async def on_get_diagnostics(self, payload: dict[str, Any]) -> Reply:
        name = f"diagnostics-{safe_name(self.app.settings.ocpp.charge_point_id)}-{self._stamp()}.tar.gz"
        request = LogUpload(
            location=payload["location"],
            retries=max(0, int(payload.get("retries", DEFAULT_RETRIES))),
            retry_interval_s=max(0.0, float(payload.get("retryInterval", DEFAULT_RETRY_INTERVAL_S))),
            start_s=parse_datetime_s(payload.get("startTime")),
            stop_s=parse_datetime_s(payload.get("stopTime")),
        )
        log.info("GetDiagnostics: uploading %s to %r", name, safe_url(request.location))

        def start() -> None:
            if self._diagnostics_task is not None and not self._diagnostics_task.done():
                self._diagnostics_task.cancel()
            self._diagnostics_task = self.app.spawn(self._upload_diagnostics(request, name), "diagnostics-upload")

        return Reply({"fileName": name}, after_sent=start)

    def _stamp(self) -> str:
        return self.app.clock.now().strftime("%Y%m%dT%H%M%SZ")

    # ------------------------------------------------------------------ triggers

    async def _trigger_firmware_status(self, _connector_id: int | None) -> None:
        # §4.5: Idle only when triggered and not busy; otherwise the current status.
        last = self.last_status()
        status = "Idle"
        if self.busy and last is not None:
            status = str(last["status"])
            status = status if status in PLAIN_STATUSES else _PLAIN_EQUIVALENT.get(status, "Idle")
        await self.app.try_call("FirmwareStatusNotification", {"status": status}, allow_unregistered=True)

    async def send_signed_status_triggered(self) -> None:
        """ExtendedTriggerMessage(FirmwareStatusNotification): the last SignedFirmwareStatus
        sent, or Idle after Installed / when nothing was ever sent (L01.FR.28, L01.FR.29)."""
        last = self.last_status()
        payload: dict[str, Any] = {"status": "Idle"}
        if last is not None and last["status"] != "Installed" and last.get("request_id") is not None:
            payload = {"status": last["status"], "requestId": last["request_id"]}
        await self.app.try_call("SignedFirmwareStatusNotification", payload, allow_unregistered=True)

    async def _trigger_diagnostics_status(self, _connector_id: int | None) -> None:
        status = self._diagnostics_status or "Idle"  # §4.4
        await self.app.try_call("DiagnosticsStatusNotification", {"status": status}, allow_unregistered=True)

    # ------------------------------------------------------------------ the update

    async def _execute(self, job: FirmwareJob) -> None:
        if job.phase == "scheduled":
            await self._until(job, job.retrieve_at_s, "DownloadScheduled" if job.signed else None)
            job.phase = "downloading"
            self._save_job(job)
        if job.phase == "downloading":
            if not await self._download(job):
                await self._report(job, "DownloadFailed")
                self._finish(job)
                return
            job.phase = "downloaded"
            self._save_job(job)
            await self._report(job, "Downloaded")
        if job.phase == "downloaded":
            if job.signed:
                if not await self._signature_ok(job):
                    await self._report(job, "InvalidSignature")
                    self._finish(job)
                    return
                await self._report(job, "SignatureVerified")
                if job.install_at_s is not None:
                    await self._until(job, job.install_at_s, "InstallScheduled")   # L01.FR.16
            await self._wait_until_idle()
            job.phase = "installing"
            self._save_job(job)
        if job.phase == "installing":
            await self._install(job)

    def _on_connector_event(self, _event: Any) -> None:
        if self._unavailable_wanted:
            self._wake.set()

    def _on_transaction_event(self, event: Any) -> None:
        from chargepoint.services.transactions import TransactionStopped

        if isinstance(event, TransactionStopped):
            self._wake.set()

    async def _wait_wake(self, timeout_s: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()

    async def _until(self, job: FirmwareJob, when_s: float, scheduled_status: str | None) -> None:
        """Wait until the wall clock reaches `when_s` (re-read on our clock changes, and every
        few seconds for a step by someone else)."""
        if when_s > self.app.clock.wall_s() and scheduled_status is not None:
            await self._report(job, scheduled_status)
        while True:
            self._wake.clear()
            remaining_s = when_s - self.app.clock.wall_s()
            if remaining_s <= 0:
                return
            await self._wait_wake(min(remaining_s, WALL_CLOCK_RECHECK_S))

    async def _download(self, job: FirmwareJob) -> bool:
        attempts = 1 + max(0, job.retries)
        path = self.dir / job.file_name
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self._report(job, "Downloading")
        for attempt in range(1, attempts + 1):
            cancel = threading.Event()
            try:
                size = await asyncio.to_thread(download, job.location, path, opener=self._opener, cancel=cancel)
            except TransferError as exc:
                log.warning("firmware download attempt %d of %d from %r failed: %s",
                            attempt, attempts, safe_url(job.location), exc)
                if attempt < attempts:
                    await asyncio.sleep(job.retry_interval_s)
                continue
            except asyncio.CancelledError:
                cancel.set()
                raise
            log.info("firmware downloaded: %s (%d bytes)", path.name, size)
            return True
        return False

    async def _signature_ok(self, job: FirmwareJob) -> bool:
        security = getattr(self.app, "security", None)
        if security is None:
            log.error("signed firmware but no security service to verify it")
            return False
        problem: str | None = await security.verify_firmware(job, self.dir / job.file_name)
        return problem is None

    def _connectors_in_transaction(self) -> list[int]:
        transactions = self.app.transactions
        if transactions is None:
            return []
        return [cid for cid in self.app.controllers if transactions.active(cid) is not None]

    async def _wait_until_idle(self) -> None:
        """Errata 3.49 / L01.FR.06-07: install only when no transaction runs; meanwhile every
        connector not in use is Unavailable."""
        logged = False
        while True:
            self._wake.clear()
            busy = self._connectors_in_transaction()
            if not busy:
                break
            self._unavailable_wanted = True
            for cid, controller in self.app.controllers.items():
                if cid not in busy and cid not in self._unavailable and not _preparing(controller):
                    controller.set_available(False)
                    self._unavailable.add(cid)
            if not logged:
                log.info("firmware installation waits for the transaction(s) on connector(s) %s to end", busy)
                logged = True
            await self._wait_wake(None if self._stops_notified else POLL_S)
        self._unavailable_wanted = False
        if logged:
            # The stop is queued, not yet sent: let the central system see the StopTransaction.req
            # before "Installing" and the restart (bounded; only while there is a link to send on).
            deadline_s = self.app.clock.monotonic_s() + STOP_DELIVERY_WAIT_S
            # The count lives in SQLite (no event): a short poll, for at most STOP_DELIVERY_WAIT_S.
            while (self.app.online and self.app.store.queue.pending_count() > 0  # noqa: ASYNC110
                   and self.app.clock.monotonic_s() < deadline_s):
                await asyncio.sleep(0.05)

    def _restore_availability(self) -> None:
        store = self.app.store
        station_operative = store.kv_get("availability", "0", "Operative") != "Inoperative"
        for cid in sorted(self._unavailable):
            operative = station_operative and store.kv_get("availability", str(cid), "Operative") != "Inoperative"
            self.app.controllers[cid].set_available(operative)
        self._unavailable.clear()

    async def _install(self, job: FirmwareJob) -> None:
        path = self.dir / job.file_name
        job.install_attempts += 1
        self._save_job(job)
        await self._report(job, "Installing")
        if job.install_attempts > MAX_INSTALL_ATTEMPTS:
            log.error("firmware installation interrupted %d times: giving up", job.install_attempts - 1)
            await self._fail_installation(job)
            return
        try:
            version = await asyncio.to_thread(self.installer, path)
        except InstallError as exc:
            log.error("firmware installation failed: %s", exc)
            await self._fail_installation(job)
            return
        except Exception:
            log.exception("firmware installer crashed")
            await self._fail_installation(job)
            return
        job.phase = "rebooting"
        with self.app.store.transaction():
            # The version and "restart pending" in one commit: after a power cut here the
            # new process still reports Installed with the right firmwareVersion.
            self.app.store.kv_put(NS, "installed_version", version)
            self._save_job(job)
        log.info("firmware %s installed; restarting to activate it", version)
        if job.signed:
            await self._report(job, "InstallRebooting")   # L01.FR.15
        self._security_event("ResetOrReboot", f"restart to activate firmware {version}")
        self.app.request_stop(restart=True)

    async def _fail_installation(self, job: FirmwareJob) -> None:
        await self._report(job, "InstallationFailed")
        self._restore_availability()
        self._finish(job)

    def _finish(self, job: FirmwareJob) -> None:
        self.app.store.kv_delete(NS, "job")
        self._remove_file(job)

    def _remove_file(self, job: FirmwareJob) -> None:
        path = self.dir / job.file_name
        for leftover in (path, path.with_name(path.name + ".part")):
            with contextlib.suppress(OSError):
                leftover.unlink()
        with contextlib.suppress(OSError):
            path.parent.rmdir()

    # ------------------------------------------------------------------ reporting

    @staticmethod
    def _status_message(job: FirmwareJob, status: str) -> tuple[str, dict[str, Any]]:
        if job.signed:
            # L01.FR.10: every notification of a signed update carries its requestId.
            return "SignedFirmwareStatusNotification", {"status": status, "requestId": job.request_id}
        return "FirmwareStatusNotification", {"status": status}

    def _remember_status(self, job: FirmwareJob, status: str) -> None:
        self.app.store.kv_put(NS, "last_status",
                              {"status": status, "signed": job.signed, "request_id": job.request_id})

    async def _report(self, job: FirmwareJob, status: str) -> None:
        self._remember_status(job, status)
        log.info("firmware update status: %s", status)
        if not job.signed and status not in PLAIN_STATUSES:
            return   # e.g. SignatureVerified: no such FirmwareStatus in OCPP 1.6 §7.25
        action, payload = self._status_message(job, status)
        await self.outbox.send(action, payload)

    def _security_event(self, kind: str, tech_info: str) -> None:
        if self.app.security_events is not None:
            self.app.security_events(kind, tech_info)

    # ------------------------------------------------------------------ diagnostics

    def secrets(self) -> list[str]:
        """Strings that must never leave the charger in a diagnostics file."""
        found = {self.app.password(), self.app.settings.ocpp.password}
        return sorted((s for s in found if s and len(s) >= 8), key=len, reverse=True)

    async def diagnostics_archive(self, start_s: float | None = None, stop_s: float | None = None,
                                  extra: dict[str, str] | None = None) -> bytes:
        """The diagnostics file: log lines in the window, status, configuration (no secrets)."""
        offset_s = self.app.clock.offset_s or 0.0
        members = {
            "log.txt": format_log_lines(self.log_ring.lines(), offset_s=offset_s, start_s=start_s, stop_s=stop_s),
            "status.json": json.dumps(self.app.status(), indent=2, default=str),
            "configuration.json": json.dumps(self.app.config.get_configuration(None), indent=2),
            "firmware.json": json.dumps({"installed_version": self.app.firmware_version(),
                                         "last_status": self.last_status()}, indent=2),
            **(extra or {}),
        }
        secrets = self.secrets()
        members = {name: scrub(text, secrets) for name, text in members.items()}
        return await asyncio.to_thread(tar_gz, members, mtime_s=self.app.clock.wall_s())

    async def upload_with_retries(self, request: LogUpload, file_name: str, data: bytes) -> bool:
        url = upload_url(request.location, file_name)
        attempts = 1 + max(0, request.retries)
        for attempt in range(1, attempts + 1):
            try:
                await asyncio.to_thread(upload, url, data, opener=self._opener)
            except TransferError as exc:
                log.warning("upload attempt %d of %d to %r failed: %s", attempt, attempts, safe_url(url), exc)
                if attempt < attempts:
                    await asyncio.sleep(request.retry_interval_s)
                continue
            log.info("uploaded %s (%d bytes) to %r", file_name, len(data), safe_url(url))
            return True
        return False

    async def _upload_diagnostics(self, request: LogUpload, file_name: str) -> None:
        self._diagnostics_status = "Uploading"
        try:
            await self._diagnostics_outbox.send("DiagnosticsStatusNotification", {"status": "Uploading"})
            data = await self.diagnostics_archive(request.start_s, request.stop_s)
            ok = await self.upload_with_retries(request, file_name, data)
        finally:
            self._diagnostics_status = None
        await self._diagnostics_outbox.send("DiagnosticsStatusNotification",
                                            {"status": "Uploaded" if ok else "UploadFailed"})

    # ------------------------------------------------------------------ status

    def _contribute(self, result: dict[str, Any]) -> None:
        job = self._load_job()
        last = self.last_status()
        result["firmware"] = {
            "version": self.app.firmware_version(),
            "update_phase": None if job is None else job.phase,
            "last_status": None if last is None else last["status"],
            "diagnostics": self._diagnostics_status,
        }
