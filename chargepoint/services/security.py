"""Security Whitepaper extensions for OCPP 1.6-J (edition 3): security events and the
security log, certificate management, signed firmware, log upload, ExtendedTriggerMessage.

Security events (§3 A04, §8)
    `app.security_events` is `SecurityService.record(kind, tech_info)`: every event goes to
    the security log (a bounded SQLite table, A04.FR.04 / N01.FR.05, oldest rows dropped
    first); critical ones (§8 table) and the two L01.FR.02/03 firmware events are also
    queued as SecurityEventNotification in the durable transaction-message queue (kind
    "security_event", A04.FR.02: guaranteed delivery), delivered in order with the
    transaction messages once registered, with their own event time (re-stamped if it
    happened before the clock was synchronised, never 1970). The queue is worked by the
    transaction service's TransactionMessageSender (found as `app.tx_sender`, or as an
    attribute of `app.transactions`), which this service wakes after each enqueue.
    Emitted here: StartupOfTheDevice (every start), SettingSystemTime (the system clock was
    stepped by NTP; noticed by watching the clock), InvalidChargePointCertificate,
    InvalidFirmwareSigningCertificate, InvalidFirmwareSignature,
    ReconfigurationOfSecurityParameters (certificates installed/deleted/signed).

Certificates (A02, A03, M03, M04, M05), under `state_dir/certs/`
    CentralSystemRootCertificate/ and ManufacturerRootCertificate/ hold one PEM per
    installed CA certificate (named by its SHA-256 fingerprint); `central-system-roots.pem`
    is the bundle of the installed CentralSystemRootCertificates for the TLS link.
    ChargePointCertificate/ holds the signed client certificates (chain + private key,
    0600); `client_certificate()` picks the newest one already valid (A02.FR.08/09).
    AdditionalRootCertificateCheck is false (M05.FR.08-13 not implemented). Deleting the
    last CentralSystemRootCertificate is refused (Failed): it would cut the charger off
    (M04.FR.06, conservatively: we cannot tell which root validated the connection).
    Hash data (§6.1, edition 3): issuerNameHash over the DER of the certificate's issuer
    name, issuerKeyHash over the issuer's public key bits (RFC 6960 CertID), serialNumber
    in hex without leading zeroes. The parsing and checking is services/certificates.py,
    imported on the first certificate operation only (`cryptography` is ~7 MB of RSS a
    charger without certificates never needs); looking at the files needs no parsing.

    ExtendedTriggerMessage(SignChargePointCertificate) (A02): a new EC P-256 key (A00.FR.503)
    and a CSR with CN = charge point id, O = CpoName (A02.FR.13; Rejected while CpoName is
    empty, the use case's prerequisite). The private key is kept (0600) until
    CertificateSigned arrives and never leaves the charger (A02.FR.05). CertificateSigned
    is Accepted only when the leaf holds that key, names this charge point, is valid now
    and chains to an installed CentralSystemRootCertificate (before any is installed: to
    the roots of `[tls] ca_file`, the ones the link already trusts) (A02.FR.06); otherwise
    Rejected and an InvalidChargePointCertificate event (A02.FR.07). A03: a client
    certificate of ours that expires within 30 days triggers a new CSR (at most daily).

Signed firmware (L01)
    SignedUpdateFirmware: the signingCertificate must be issued directly by an installed
    ManufacturerRootCertificate (no intermediates, L01 remarks) and be valid, else
    InvalidCertificate + InvalidFirmwareSigningCertificate (L01.FR.23/24, L01.FR.02).
    Download, install and status reporting are the firmware engine's
    (services/firmware.py). After download the signature (base64) over the whole file is
    checked with the certificate's key: ECDSA with SHA-256, or RSA with SHA-256 as
    RSA-PSS (L01.FR.04) or PKCS#1 v1.5; failure -> InvalidSignature and an
    InvalidFirmwareSignature event (L01.FR.03). Once a ManufacturerRootCertificate is
    installed, unsigned UpdateFirmware is answered CALLERROR NotSupported (L01.FR.20).

GetLog (N01)
    DiagnosticsLog: the GetDiagnostics archive; SecurityLog: the security log as text.
    Uploaded like diagnostics (HTTP PUT/POST), LogStatusNotification with the requestId
    (Uploading, Uploaded, UploadFailure); a new GetLog cancels a running upload
    (AcceptedCanceled, N01.FR.11).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chargepoint.clock import EventTime
from chargepoint.ocppj.session import Reply
from chargepoint.services.firmware import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_INTERVAL_S,
    FirmwareJob,
    LogUpload,
    StatusOutbox,
    iso8601_s,
    parse_datetime_s,
    safe_name,
    safe_url,
    scrub,
)
from chargepoint.services.tx_delivery import TransactionMessageSender
from chargepoint.store.queue import time_ref

if TYPE_CHECKING:
    from cryptography import x509

    from chargepoint.app import ChargePointApp

log = logging.getLogger("chargepoint.security")

CS_ROOT = "CentralSystemRootCertificate"
MF_ROOT = "ManufacturerRootCertificate"
CP_CERT = "ChargePointCertificate"
ROOT_KINDS = (CS_ROOT, MF_ROOT)

# Security WP §8: critical events are pushed to the central system.
CRITICAL_EVENTS = frozenset({
    "FirmwareUpdated", "SettingSystemTime", "StartupOfTheDevice", "ResetOrReboot", "SecurityLogWasCleared",
    "MemoryExhaustion", "TamperDetectionActivated",
})
# L01.FR.02 / L01.FR.03: these SHALL be sent as SecurityEventNotification although §8 does
# not mark them critical.
PUSHED_EVENTS = CRITICAL_EVENTS | {"InvalidFirmwareSigningCertificate", "InvalidFirmwareSignature"}
SECURITY_LOG_MAX_ROWS = 1000
TECH_INFO_MAX_LEN = 255          # SecurityEventNotification.techInfo string[0..255]

RENEW_BEFORE_S = 30 * 86400.0    # A03.FR.02: one month before expiry
RENEW_RETRY_S = 86400.0
RENEWAL_CHECK_INTERVAL_S = 3600.0

# The pure certificate logic lives in services/certificates.py and needs `cryptography`
# (~7 MB RSS): it is imported on the first certificate operation, never at start-up.
_CERTIFICATE_LOGIC = frozenset({
    "HASH_ALGORITHMS", "MAX_CHAIN_DEPTH", "certificate_hash_data", "fingerprint", "hash_data_matches", "is_ca",
    "issued_by", "load_certificates", "make_csr", "signature_valid", "validity_problem", "verify_chain"})


def __getattr__(name: str) -> Any:
    """`from chargepoint.services.security import verify_chain` still works (loaded lazily)."""
    if name in _CERTIFICATE_LOGIC:
        from chargepoint.services import certificates

        return getattr(certificates, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sha256_file(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.digest()


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------- certificate files


class CertificateStore:
    """Certificates as PEM files under one directory (layout in the module docstring).

    Looking at the files (is there a bundle, are there certificates of a kind) needs no
    `cryptography`; parsing them (only when there are some) loads services/certificates.py.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def root_files(self, kind: str) -> list[Path]:
        folder = self.dir / kind
        return sorted(folder.glob("*.pem")) if folder.is_dir() else []

    def roots(self, kind: str) -> list[tuple[Path, x509.Certificate]]:
        found: list[tuple[Path, x509.Certificate]] = []
        files = self.root_files(kind)
        if not files:
            return found
        from chargepoint.services.certificates import load_certificates

        for path in files:
            try:
                found.append((path, load_certificates(path.read_bytes())[0]))
            except (ValueError, OSError) as exc:
                log.error("unreadable certificate %s ignored: %s", path, exc)
        return found

    def count_roots(self) -> int:
        return sum(len(self.roots(kind)) for kind in ROOT_KINDS)

    def install_root(self, kind: str, cert: x509.Certificate) -> Path:
        from chargepoint.services.certificates import fingerprint, to_pem

        folder = self.dir / kind
        folder.mkdir(exist_ok=True, mode=0o700)
        path = folder / f"{fingerprint(cert)}.pem"
        _write_atomic(path, to_pem([cert]))
        self.write_bundle()
        return path

    def delete(self, path: Path) -> None:
        path.unlink()
        self.write_bundle()

    @property
    def bundle_path(self) -> Path:
        return self.dir / "central-system-roots.pem"

    def write_bundle(self) -> None:
        roots = self.roots(CS_ROOT)
        if not roots:
            with contextlib.suppress(FileNotFoundError):
                self.bundle_path.unlink()
            return
        from chargepoint.services.certificates import to_pem

        _write_atomic(self.bundle_path, to_pem([c for _, c in roots]))

    # -- the charge point's own key and certificates

    @property
    def pending_key_path(self) -> Path:
        return self.dir / "pending-key.pem"

    def save_pending_key(self, key_pem: bytes) -> None:
        _write_atomic(self.pending_key_path, key_pem, 0o600)

    def pending_key(self) -> Any:
        from chargepoint.services.certificates import load_private_key

        try:
            return load_private_key(self.pending_key_path.read_bytes())
        except (OSError, ValueError, TypeError):
            return None

    def clear_pending_key(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.pending_key_path.unlink()

    def save_charge_point_certificate(self, chain: list[x509.Certificate], key_pem: bytes) -> Path:
        from chargepoint.services.certificates import fingerprint, to_pem

        folder = self.dir / CP_CERT
        folder.mkdir(exist_ok=True, mode=0o700)
        leaf = chain[0]
        stem = f"{leaf.not_valid_before_utc:%Y%m%dT%H%M%SZ}-{fingerprint(leaf)[:16]}"
        _write_atomic(folder / f"{stem}.key", key_pem, 0o600)
        path = folder / f"{stem}.pem"
        _write_atomic(path, to_pem(chain))
        return path

    def charge_point_certificates(self) -> list[tuple[Path, Path, x509.Certificate]]:
        folder = self.dir / CP_CERT
        found: list[tuple[Path, Path, x509.Certificate]] = []
        files = sorted(folder.glob("*.pem")) if folder.is_dir() else []
        if not files:
            return found
        from chargepoint.services.certificates import load_certificates

        for path in files:
            key = path.with_suffix(".key")
            try:
                found.append((path, key, load_certificates(path.read_bytes())[0]))
            except (ValueError, OSError) as exc:
                log.error("unreadable charge point certificate %s ignored: %s", path, exc)
        return found


# ---------------------------------------------------------------------- the service


class SecurityService:
    def __init__(self, app: ChargePointApp) -> None:
        self.app = app
        self.certs = CertificateStore(Path(app.settings.storage.state_dir) / "certs")
        self._log_outbox = StatusOutbox(app, "log_upload")
        self._log_task: asyncio.Task[None] | None = None
        self._log_request_id: int | None = None       # the GetLog upload in progress
        self._seen_sync = app.clock.last_sync
        self._seen_step = app.clock.last_step_s
        self._renewal_requested_s: float | None = None
        # The renewal loop sleeps until its next hourly check, or until the charger is online
        # (link state, registration accepted); a clock step is recorded as it happens.
        self._wake = asyncio.Event()
        app.clock.add_listener(self._on_clock_change)
        app.add_link_listener(lambda _state: self._wake.set())
        app.registration.on_accepted(self._wake.set)
        self._create_log_table()
        app.security_events = self.record
        for action, handler in (
            ("InstallCertificate", self.on_install_certificate),
            ("GetInstalledCertificateIds", self.on_get_installed_certificate_ids),
            ("DeleteCertificate", self.on_delete_certificate),
            ("CertificateSigned", self.on_certificate_signed),
            ("ExtendedTriggerMessage", self.on_extended_trigger_message),
            ("SignedUpdateFirmware", self.on_signed_update_firmware),
            ("GetLog", self.on_get_log),
        ):
            app.on(action, handler)
        app.add_status_contributor(self._contribute)
        self.record("StartupOfTheDevice", f"firmware {app.firmware_version()}")

    # ------------------------------------------------------------------ security events

    def _create_log_table(self) -> None:
        self.app.store.execute(
            "CREATE TABLE IF NOT EXISTS security_log ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL, tech_info TEXT NOT NULL,"
            " pushed INTEGER NOT NULL, boot_id, monotonic_s REAL, wall_s REAL)")

    def record(self, kind: str, tech_info: str = "") -> None:
        """Log a security event; queue SecurityEventNotification for the pushed ones."""
        tech_info = (tech_info or "")[:TECH_INFO_MAX_LEN]
        pushed = kind in PUSHED_EVENTS
        when = self.app.clock.event_time()
        store = self.app.store
        try:
            with store.transaction():
                store.execute(
                    "INSERT INTO security_log (type, tech_info, pushed, boot_id, monotonic_s, wall_s)"
                    " VALUES (?, ?, ?, ?, ?, ?)", (kind, tech_info, int(pushed), when.boot_id, when.monotonic_s,
                                                    when.wall_s))
                # Rolling log (A04.FR.04 note): keep the newest rows only.
                store.execute("DELETE FROM security_log WHERE id <= (SELECT MAX(id) FROM security_log) - ?",
                              (SECURITY_LOG_MAX_ROWS,))
                if pushed:
                    payload: dict[str, Any] = {"type": kind[:50], "timestamp": time_ref(when)}
                    if tech_info:
                        payload["techInfo"] = tech_info
                    store.queue.enqueue("SecurityEventNotification", payload, local_tx_id=None,
                                        kind="security_event", event_time=when)
        except sqlite3.Error:
            log.exception("security event %s could not be stored", kind)
            return
        (log.warning if pushed else log.info)("security event %s%s", kind, f": {tech_info!r}" if tech_info else "")
        sender = self._sender()
        if sender is not None:
            sender.notify()

    def security_log(self, start_s: float | None = None, stop_s: float | None = None) -> list[dict[str, Any]]:
        """The security log, oldest first (time None when it is not known yet)."""
        rows = self.app.store.query("SELECT * FROM security_log ORDER BY id")
        out: list[dict[str, Any]] = []
        for row in rows:
            when = self.app.clock.resolve(EventTime(str(row["boot_id"]), float(row["monotonic_s"]), row["wall_s"]))
            when_s = None if when is None else when.timestamp()
            if when_s is not None and ((start_s is not None and when_s < start_s)
                                       or (stop_s is not None and when_s > stop_s)):
                continue
            out.append({"time_s": when_s, "type": row["type"], "tech_info": row["tech_info"],
                        "pushed": bool(row["pushed"])})
        return out

    def _sender(self) -> TransactionMessageSender | None:
        """The one sender working the durable queue (owned by the transaction service)."""
        sender = getattr(self.app, "tx_sender", None)
        if isinstance(sender, TransactionMessageSender):
            return sender
        transactions = self.app.transactions
        if transactions is not None:
            with contextlib.suppress(TypeError):
                for value in vars(transactions).values():
                    if isinstance(value, TransactionMessageSender):
                        return value
        return None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        if self._sender() is None:
            log.error("no transaction message sender: security events stay queued until there is one")
        next_renewal_check_s = 0.0
        while True:
            self._wake.clear()
            self._check_clock_step()
            now_s = self.app.clock.monotonic_s()
            if self.app.online and now_s >= next_renewal_check_s:
                next_renewal_check_s = now_s + RENEWAL_CHECK_INTERVAL_S
                self._check_certificate_renewal()
            timeout_s = max(0.0, next_renewal_check_s - now_s) if self.app.online else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._wake.wait()

    def _on_clock_change(self) -> None:
        try:
            self._check_clock_step()
        except Exception:
            log.exception("security: recording a clock step failed")

    def _check_clock_step(self) -> None:
        """SettingSystemTime when NTP stepped the system clock since the last look (called on
        every Clock.apply_offset): a step shows as a new `last_step_s`, or (the same step size
        again) as a new sync that left the offset at exactly 0 (apply_offset(stepped=True))."""
        clock = self.app.clock
        step_s, sync = clock.last_step_s, clock.last_sync
        new_step = step_s is not None and step_s != self._seen_step
        new_stepped_sync = (sync is not None and sync != self._seen_sync and step_s is not None
                            and clock.offset_s == 0.0)
        self._seen_step, self._seen_sync = step_s, sync
        if new_step or new_stepped_sync:
            self.record("SettingSystemTime", f"system clock stepped by {step_s:+.3f} s (ntp)")

    def _check_certificate_renewal(self) -> None:
        """A03.FR.02: renew our client certificate one month before it expires."""
        now_s = self.app.clock.monotonic_s()
        if self._renewal_requested_s is not None and now_s - self._renewal_requested_s < RENEW_RETRY_S:
            return
        current = self.client_certificate()
        if current is None or not self.app.config.raw("CpoName"):
            return
        from chargepoint.services.certificates import load_certificates

        cert = load_certificates(current[0].read_bytes())[0]
        if cert.not_valid_after_utc.timestamp() - self.app.clock.wall_s() > RENEW_BEFORE_S:
            return
        self._renewal_requested_s = now_s
        log.info("charge point certificate expires %s: requesting a new one", cert.not_valid_after_utc)
        self.app.spawn(self.request_certificate(triggered=False), "sign-certificate")

    # ------------------------------------------------------------------ link integration

    def _now(self) -> dt.datetime | None:
        return self.app.clock.now() if self.app.clock.plausible else None

    def client_certificate(self) -> tuple[Path, Path] | None:
        """(certificate chain PEM, key PEM) of the newest valid client certificate (A02.FR.08/09)."""
        found = self.certs.charge_point_certificates()
        if not found:
            return None   # no certificate files: nothing to parse (cryptography not loaded)
        from chargepoint.services.certificates import validity_problem

        now = self._now()
        usable = [(cert.not_valid_before_utc, path, key) for path, key, cert in found
                  if key.exists() and validity_problem(cert, now) is None]
        if not usable:
            return None
        _, path, key = max(usable)
        return path, key

    def central_system_ca_bundle(self) -> Path | None:
        """The installed CentralSystemRootCertificates as one PEM file (None when none)."""
        return self.certs.bundle_path if self.certs.bundle_path.exists() else None

    def requires_signed_firmware(self) -> bool:
        return bool(self.certs.roots(MF_ROOT))   # parsed only when there are files

    # ------------------------------------------------------------------ M03 / M04 / M05

    async def on_install_certificate(self, payload: dict[str, Any]) -> dict[str, Any]:
        from chargepoint.services.certificates import fingerprint, is_ca, load_certificates, validity_problem

        kind = payload["certificateType"]
        try:
            certs = load_certificates(payload["certificate"])
        except ValueError as exc:
            log.info("InstallCertificate %s rejected: not a PEM certificate (%s)", kind, exc)
            return {"status": "Rejected"}
        cert = certs[0]
        problem = None
        if len(certs) != 1:
            problem = "more than one certificate"
        elif not is_ca(cert):
            problem = "not a CA certificate"
        else:
            problem = validity_problem(cert, self._now())
        if problem is not None:
            log.info("InstallCertificate %s rejected: %r", kind, problem)   # M05.FR.06
            return {"status": "Rejected"}
        if any(fingerprint(c) == fingerprint(cert) for _, c in self.certs.roots(kind)):
            return {"status": "Accepted"}
        if self.certs.count_roots() >= self.app.config.get_int("CertificateStoreMaxLength"):
            log.info("InstallCertificate %s rejected: CertificateStoreMaxLength reached", kind)   # M05.FR.03
            return {"status": "Rejected"}
        try:
            self.certs.install_root(kind, cert)
        except OSError as exc:
            log.error("InstallCertificate %s failed: %s", kind, exc)   # M05.FR.04
            return {"status": "Failed"}
        self.record("ReconfigurationOfSecurityParameters", f"{kind} installed: {cert.subject.rfc4514_string()}")
        return {"status": "Accepted"}

    def _issuer_of(self, cert: x509.Certificate) -> x509.Certificate:
        from chargepoint.services.certificates import issued_by

        if cert.issuer == cert.subject:
            return cert
        for kind in ROOT_KINDS:
            for _, candidate in self.certs.roots(kind):
                if issued_by(cert, candidate):
                    return candidate
        # The issuer is not installed: its key is unknown. Self-hash as a stable stand-in.
        return cert

    async def on_get_installed_certificate_ids(self, payload: dict[str, Any]) -> dict[str, Any]:
        installed = self.certs.roots(payload["certificateType"])
        if not installed:
            return {"status": "NotFound"}   # M03.FR.02
        from chargepoint.services.certificates import certificate_hash_data

        entries = [certificate_hash_data(cert, self._issuer_of(cert)) for _, cert in installed]
        if not entries:
            return {"status": "NotFound"}   # M03.FR.02
        return {"status": "Accepted", "certificateHashData": entries}

    async def on_delete_certificate(self, payload: dict[str, Any]) -> dict[str, Any]:
        from chargepoint.services.certificates import certificate_hash_data, hash_data_matches

        wanted = payload["certificateHashData"]
        algorithm = wanted["hashAlgorithm"]
        for kind in ROOT_KINDS:
            installed = self.certs.roots(kind)
            for path, cert in installed:
                if not hash_data_matches(certificate_hash_data(cert, self._issuer_of(cert), algorithm), wanted):
                    continue
                if kind == CS_ROOT and len(installed) == 1:
                    log.info("DeleteCertificate refused: the last CentralSystemRootCertificate")   # M04.FR.06
                    return {"status": "Failed"}
                try:
                    self.certs.delete(path)
                except OSError as exc:
                    log.error("DeleteCertificate failed: %s", exc)   # M04.FR.03
                    return {"status": "Failed"}
                self.record("ReconfigurationOfSecurityParameters",
                            f"{kind} deleted: {cert.subject.rfc4514_string()}")
                return {"status": "Accepted"}
        for _, _, cert in self.certs.charge_point_certificates():
            if hash_data_matches(certificate_hash_data(cert, cert, algorithm), wanted) or any(
                    hash_data_matches(certificate_hash_data(cert, issuer, algorithm), wanted)
                    for _, issuer in self.certs.roots(CS_ROOT)):
                return {"status": "Failed"}   # M04.FR.05: never our own certificate
        return {"status": "NotFound"}   # M04.FR.04

    # ------------------------------------------------------------------ A02 / A03

    async def request_certificate(self, *, triggered: bool) -> bool:
        """Generate a key and send SignCertificate.req; True when the central system accepted it."""
        cpo_name = self.app.config.raw("CpoName")
        cp_id = self.app.settings.ocpp.charge_point_id
        from chargepoint.services.certificates import make_csr

        key_pem, csr_pem = await asyncio.to_thread(make_csr, cp_id, cpo_name)
        self.certs.save_pending_key(key_pem)
        conf = await self.app.try_call("SignCertificate", {"csr": csr_pem}, allow_unregistered=triggered)
        status = None if conf is None else conf.get("status")
        log.info("SignCertificate: %s", status or "not answered")
        return status == "Accepted"

    def _charge_point_certificate_problem(self, chain: list[x509.Certificate]) -> str | None:
        from chargepoint.services.certificates import common_names, has_organization, holds_key, verify_chain

        leaf = chain[0]
        key = self.certs.pending_key()
        if key is None:
            return "no certificate signing request pending"
        if not holds_key(leaf, key):
            return "not the key of our certificate signing request"
        names = common_names(leaf)
        if names != [self.app.settings.ocpp.charge_point_id]:
            return f"subject CN {names} is not this charge point"   # A00.FR.511
        if not has_organization(leaf):
            return "subject has no organizationName"   # A00.FR.509
        roots = [c for _, c in self.certs.roots(CS_ROOT)] or self._configured_roots()
        return verify_chain(chain, roots, self._now())

    def _configured_roots(self) -> list[x509.Certificate]:
        ca_file = self.app.settings.tls.ca_file
        if ca_file is None:
            return []
        from chargepoint.services.certificates import load_certificates

        try:
            return load_certificates(Path(ca_file).read_bytes())
        except (OSError, ValueError):
            return []

    async def on_certificate_signed(self, payload: dict[str, Any]) -> dict[str, Any]:
        text = payload["certificateChain"]
        problem: str | None
        chain: list[x509.Certificate] = []
        if len(text) > self.app.config.get_int("CertificateSignedMaxChainSize"):
            problem = "certificateChain longer than CertificateSignedMaxChainSize"
        else:
            from chargepoint.services.certificates import load_certificates

            try:
                chain = load_certificates(text)
                problem = self._charge_point_certificate_problem(chain)
            except ValueError as exc:
                problem = f"not a PEM certificate chain ({exc})"
        if problem is not None:
            self.record("InvalidChargePointCertificate", problem)   # A02.FR.07: discarded
            return {"status": "Rejected"}
        key_pem = self.certs.pending_key_path.read_bytes()
        try:
            path = self.certs.save_charge_point_certificate(chain, key_pem)
        except OSError as exc:
            log.error("CertificateSigned: cannot store the certificate: %s", exc)
            return {"status": "Rejected"}
        self.certs.clear_pending_key()
        self.record("ReconfigurationOfSecurityParameters",
                    f"new charge point certificate, serial {format(chain[0].serial_number, 'X')}")
        log.info("charge point certificate stored: %s (valid %s to %s)", path.name,
                 chain[0].not_valid_before_utc, chain[0].not_valid_after_utc)
        return {"status": "Accepted"}

    # ------------------------------------------------------------------ ExtendedTriggerMessage

    async def on_extended_trigger_message(self, payload: dict[str, Any]) -> dict[str, Any] | Reply:
        message = payload["requestedMessage"]
        connector_id = payload.get("connectorId")
        if connector_id is not None and connector_id not in self.app.controllers:
            return {"status": "Rejected"}
        action: Any = None
        if message == "SignChargePointCertificate":
            if not self.app.config.raw("CpoName"):
                log.info("ExtendedTriggerMessage SignChargePointCertificate rejected: CpoName is not set")
                return {"status": "Rejected"}   # A02 prerequisite

            async def sign() -> None:
                await self.request_certificate(triggered=True)

            action = sign
        elif message == "FirmwareStatusNotification":
            firmware = getattr(self.app, "firmware", None)
            action = None if firmware is None else firmware.send_signed_status_triggered
        elif message == "LogStatusNotification":
            action = self._send_log_status_triggered
        elif self.app.trigger is not None and message in self.app.trigger.handlers:
            handler = self.app.trigger.handlers[message]

            async def core() -> None:
                await handler(connector_id)

            action = core
        if action is None:
            return {"status": "NotImplemented"}
        chosen = action
        return Reply({"status": "Accepted"}, after_sent=lambda: self._spawn(chosen(), f"triggered-{message}"))

    def _spawn(self, coro: Any, name: str) -> None:
        # Work after a CALLRESULT runs as its own task: never inside the receive path.
        self.app.spawn(coro, name)

    # ------------------------------------------------------------------ L01

    def signing_certificate_problem(self, pem: str) -> str | None:
        from chargepoint.services.certificates import load_certificates, verify_chain

        try:
            certs = load_certificates(pem)
        except ValueError as exc:
            return f"not a PEM certificate ({exc})"
        roots = [c for _, c in self.certs.roots(MF_ROOT)]
        if not roots:
            return "no ManufacturerRootCertificate installed"
        # L01 remarks: no intermediate certificates for the firmware signing certificate.
        return verify_chain(certs[:1], roots, self._now(), allow_intermediates=False)

    async def on_signed_update_firmware(self, payload: dict[str, Any]) -> dict[str, Any] | Reply:
        firmware_info = payload["firmware"]
        firmware = getattr(self.app, "firmware", None)
        if firmware is None:
            return {"status": "Rejected"}
        problem = self.signing_certificate_problem(firmware_info["signingCertificate"])
        if problem is not None:
            self.record("InvalidFirmwareSigningCertificate", problem)   # L01.FR.02, L01.FR.24
            return {"status": "InvalidCertificate"}
        job = FirmwareJob(
            location=firmware_info["location"],
            retrieve_at_s=parse_datetime_s(firmware_info.get("retrieveDateTime")) or self.app.clock.wall_s(),
            install_at_s=parse_datetime_s(firmware_info.get("installDateTime")),
            retries=max(0, int(payload.get("retries", DEFAULT_RETRIES))),
            retry_interval_s=max(0.0, float(payload.get("retryInterval", DEFAULT_RETRY_INTERVAL_S))),
            signed=True,
            request_id=int(payload["requestId"]),
            signing_certificate=firmware_info["signingCertificate"],
            signature=firmware_info["signature"],
        )
        status = "AcceptedCanceled" if firmware.busy else "Accepted"   # L01.FR.26
        log.info("SignedUpdateFirmware %d: %s from %r", job.request_id, status, safe_url(job.location))

        def start() -> None:
            firmware.start_update(job)

        return Reply({"status": status}, after_sent=start)

    async def verify_firmware(self, job: FirmwareJob, path: Path) -> str | None:
        """None when `path` carries a valid signature of the job's signing certificate."""
        from chargepoint.services.certificates import load_certificates, signature_valid

        problem: str | None
        try:
            cert = load_certificates(job.signing_certificate or "")[0]
            digest = await asyncio.to_thread(sha256_file, path)
        except (ValueError, OSError) as exc:
            problem = f"cannot check the signature: {exc}"
        else:
            problem = None if signature_valid(cert, digest, job.signature or "") else "signature does not verify"
        if problem is not None:
            self.record("InvalidFirmwareSignature", f"request {job.request_id}: {problem}")   # L01.FR.03
        return problem

    # ------------------------------------------------------------------ N01

    async def on_get_log(self, payload: dict[str, Any]) -> dict[str, Any] | Reply:
        firmware = getattr(self.app, "firmware", None)
        if firmware is None:
            return {"status": "Rejected"}
        log_type = payload["logType"]
        request_id = int(payload["requestId"])
        params = payload["log"]
        stamp = self.app.clock.now().strftime("%Y%m%dT%H%M%SZ")
        cp_id = safe_name(self.app.settings.ocpp.charge_point_id)
        name = (f"diagnostics-{cp_id}-{stamp}.tar.gz" if log_type == "DiagnosticsLog"
                else f"securitylog-{cp_id}-{stamp}.txt")
        upload = LogUpload(
            location=params["remoteLocation"],
            retries=max(0, int(payload.get("retries", DEFAULT_RETRIES))),
            retry_interval_s=max(0.0, float(payload.get("retryInterval", DEFAULT_RETRY_INTERVAL_S))),
            start_s=parse_datetime_s(params.get("oldestTimestamp")),
            stop_s=parse_datetime_s(params.get("latestTimestamp")),
        )
        running = self._log_task is not None and not self._log_task.done()
        status = "AcceptedCanceled" if running else "Accepted"   # N01.FR.11
        log.info("GetLog %d (%s): %s, uploading %s to %r", request_id, log_type, status, name,
                 safe_url(upload.location))

        def start() -> None:
            if self._log_task is not None and not self._log_task.done():
                self._log_task.cancel()
            self._log_task = self.app.spawn(self._upload_log(firmware, log_type, request_id, upload, name),
                                            "log-upload")

        return Reply({"status": status, "filename": name}, after_sent=start)

    def security_log_text(self, start_s: float | None = None, stop_s: float | None = None) -> str:
        lines = []
        for entry in self.security_log(start_s, stop_s):
            when = "unknown-time" if entry["time_s"] is None else iso8601_s(entry["time_s"])
            # techInfo can hold a peer's text (a certificate subject): one line per event.
            tech_info = entry["tech_info"].replace("\r", "\\r").replace("\n", "\\n")
            info = f" {tech_info}" if tech_info else ""
            lines.append(f"{when} {entry['type']}{info}")
        return "\n".join(lines) + ("\n" if lines else "")

    async def _upload_log(self, firmware: Any, log_type: str, request_id: int, upload: LogUpload,
                          name: str) -> None:
        self._log_request_id = request_id
        ok = False
        try:
            # N01.FR.07/08: every LogStatusNotification of this upload carries its requestId.
            await self._log_outbox.send("LogStatusNotification", {"status": "Uploading", "requestId": request_id})
            if log_type == "DiagnosticsLog":
                data: bytes = await firmware.diagnostics_archive(upload.start_s, upload.stop_s)
            else:
                data = scrub(self.security_log_text(upload.start_s, upload.stop_s), firmware.secrets()).encode()
            ok = await firmware.upload_with_retries(upload, name, data)
        finally:
            self._log_request_id = None
        await self._log_outbox.send("LogStatusNotification",
                                    {"status": "Uploaded" if ok else "UploadFailure", "requestId": request_id})

    async def _send_log_status_triggered(self) -> None:
        payload: dict[str, Any] = {"status": "Idle"}   # N01.FR.12: no requestId when idle
        if self._log_request_id is not None:
            payload = {"status": "Uploading", "requestId": self._log_request_id}
        await self.app.try_call("LogStatusNotification", payload, allow_unregistered=True)

    # ------------------------------------------------------------------ status

    def _contribute(self, result: dict[str, Any]) -> None:
        client = self.client_certificate()
        result["security"] = {
            "client_certificate": None if client is None else str(client[0]),
            "central_system_roots": len(self.certs.roots(CS_ROOT)),
            "manufacturer_roots": len(self.certs.roots(MF_ROOT)),
        }
