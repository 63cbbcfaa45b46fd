"""Security Whitepaper (edition 3) end to end: security events delivered durably, certificate
management, the charge point certificate via SignCertificate / CertificateSigned, signed
firmware, GetLog and ExtendedTriggerMessage. Real CSMS over wss, real certificates made with
`cryptography`, a real HTTP server for files.

Security WP §3 A04 (A04.FR.02), §8; A02; M03, M04, M05; L01; N01; §5.5 ExtendedTriggerMessage.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from chargepoint.app import ChargePointApp
from chargepoint.csms.server import CallErrorResponse
from chargepoint.devtools.pki import issue, make_ca
from chargepoint.services.security import SecurityService
from tests.e2e.http_files import FileServer, firmware_tar_gz
from tests.support.harness import CP_ID, ChargerEnv, charger_env, eventually

pytestmark = pytest.mark.asyncio


def _iso(delta_s: float = 0.0) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delta_s)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def _registered(app: ChargePointApp) -> None:
    await eventually(lambda: app.online, timeout_s=20, message="charger registered")


def _security(app: ChargePointApp) -> SecurityService:
    service: SecurityService = app.service(SecurityService)
    return service


def _events(env: ChargerEnv) -> list[str]:
    return [r.payload["type"] for r in env.csms.received_of("SecurityEventNotification")]


def _spki_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING contents (without the unused-bits octet), by hand."""
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def header(pos: int) -> tuple[int, int]:   # (content start, content length) of the TLV at pos
        length = der[pos + 1]
        if length < 0x80:
            return pos + 2, length
        n = length & 0x7F
        return pos + 2 + n, int.from_bytes(der[pos + 2: pos + 2 + n], "big")

    start, _ = header(0)                         # SubjectPublicKeyInfo SEQUENCE
    alg_start, alg_len = header(start)           # AlgorithmIdentifier SEQUENCE
    bits_start, bits_len = header(alg_start + alg_len)
    assert der[alg_start + alg_len] == 0x03 and der[bits_start] == 0
    return der[bits_start + 1: bits_start + bits_len]


def _expected_hash_data(cert: x509.Certificate) -> dict[str, str]:
    """§6.1 edition 3, computed independently for a self-signed root."""
    return {
        "hashAlgorithm": "SHA256",
        "issuerNameHash": hashlib.sha256(cert.issuer.public_bytes()).hexdigest(),
        "issuerKeyHash": hashlib.sha256(_spki_key_bits(cert)).hexdigest(),
        "serialNumber": format(cert.serial_number, "X"),
    }


# ---------------------------------------------------------------------- security events


async def test_critical_security_events_survive_an_outage_and_a_restart_and_arrive_in_order(
        tmp_path: Path) -> None:
    """A04.FR.02: queued with guaranteed delivery; §8: only critical events are pushed,
    the others are kept in the security log."""
    async with charger_env(tmp_path) as env:
        async with env.app() as app:
            await _registered(app)
            await env.csms.wait_for("SecurityEventNotification", lambda p: p["type"] == "StartupOfTheDevice")
            await env.csms.stop()
            await eventually(lambda: not app.online, timeout_s=10)
            assert app.security_events == _security(app).record   # what the link and services call
            _security(app).record("ResetOrReboot", "offline reboot")     # critical
            _security(app).record("InvalidMessages", "kept in the log")    # not critical
            assert (await env.astatus())["queue"]["pending"] >= 1
        async with env.app() as app:    # power cycle while the central system is still down
            await eventually(lambda: app.link.state != "connected", timeout_s=5)
            app.clock.apply_offset(1.5, "ntp", stepped=True)            # NTP stepped the clock: critical too
            await env.csms.start()
            await _registered(app)
            await eventually(lambda: _events(env).count("StartupOfTheDevice") == 2 and "SettingSystemTime"
                             in _events(env), timeout_s=20, message="events delivered")
            assert _events(env) == ["StartupOfTheDevice", "ResetOrReboot", "StartupOfTheDevice",
                                    "SettingSystemTime"]
            received = env.csms.received_of("SecurityEventNotification")
            assert received[1].payload["techInfo"] == "offline reboot"
            stamps = [_ts(r.payload["timestamp"]) for r in received[:3]]
            assert stamps == sorted(stamps)
            assert abs((stamps[1] - dt.datetime.now(dt.UTC)).total_seconds()) < 120
            log_types = [e["type"] for e in _security(app).security_log()]
            assert "InvalidMessages" in log_types
            await eventually(lambda: app.store.queue.pending_count() == 0)
        env.csms.assert_no_violations()


# ---------------------------------------------------------------------- certificates (M03, M04, M05)


async def test_install_list_and_delete_root_certificates(tmp_path: Path) -> None:
    """M05 InstallCertificate, M03 GetInstalledCertificateIds (hash data per §6.1 edition 3),
    M04 DeleteCertificate (Accepted, NotFound, Failed for the last Central System root),
    CertificateStoreMaxLength (M05.FR.03), persistence across a restart."""
    root_a, _ = make_ca("CPO root A")
    root_b, _ = make_ca("CPO root B")
    maker, maker_key = make_ca("Manufacturer root")
    leaf, _ = issue(maker, maker_key, "not a CA")
    async with charger_env(tmp_path, CertificateStoreMaxLength=3) as env:
        async with env.app() as app:
            await _registered(app)
            call = env.csms.call
            assert await call(CP_ID, "GetInstalledCertificateIds",
                              {"certificateType": "CentralSystemRootCertificate"}) == {"status": "NotFound"}
            install = {"certificateType": "CentralSystemRootCertificate"}
            assert (await call(CP_ID, "InstallCertificate", {**install, "certificate": "garbage"}))["status"] \
                == "Rejected"
            assert (await call(CP_ID, "InstallCertificate", {**install, "certificate": _pem(leaf)}))["status"] \
                == "Rejected"   # not a CA certificate (M05.FR.06)
            assert (await call(CP_ID, "InstallCertificate", {**install, "certificate": _pem(root_a)}))["status"] \
                == "Accepted"
            listed = await call(CP_ID, "GetInstalledCertificateIds",
                                {"certificateType": "CentralSystemRootCertificate"})
            assert listed == {"status": "Accepted", "certificateHashData": [_expected_hash_data(root_a)]}
            assert (await call(CP_ID, "InstallCertificate", {**install, "certificate": _pem(root_b)}))["status"] \
                == "Accepted"
            assert (await call(CP_ID, "InstallCertificate", {"certificateType": "ManufacturerRootCertificate",
                                                              "certificate": _pem(maker)}))["status"] == "Accepted"
            root_c, _ = make_ca("one too many")
            assert (await call(CP_ID, "InstallCertificate", {**install, "certificate": _pem(root_c)}))["status"] \
                == "Rejected"   # M05.FR.03: CertificateStoreMaxLength reached
            bundle = _security(app).central_system_ca_bundle()
            assert bundle is not None and len(x509.load_pem_x509_certificates(bundle.read_bytes())) == 2

        async with env.app() as app:   # persisted
            await _registered(app)
            listed = await env.csms.call(CP_ID, "GetInstalledCertificateIds",
                                         {"certificateType": "CentralSystemRootCertificate"})
            assert sorted(e["serialNumber"] for e in listed["certificateHashData"]) == sorted(
                format(c.serial_number, "X") for c in (root_a, root_b))
            # CiStrings (§6.1): matched case-insensitively.
            wanted = {k: (v if k == "hashAlgorithm" else v.lower()) for k, v in _expected_hash_data(root_a).items()}
            assert await env.csms.call(CP_ID, "DeleteCertificate", {"certificateHashData": wanted}) \
                == {"status": "Accepted"}
            assert await env.csms.call(CP_ID, "DeleteCertificate", {"certificateHashData": wanted}) \
                == {"status": "NotFound"}
            last = _expected_hash_data(root_b)
            assert await env.csms.call(CP_ID, "DeleteCertificate", {"certificateHashData": last}) \
                == {"status": "Failed"}   # the last Central System root (M04.FR.06)
            assert await env.csms.call(CP_ID, "DeleteCertificate",
                                       {"certificateHashData": _expected_hash_data(maker)}) == {"status": "Accepted"}
            assert await env.csms.call(CP_ID, "GetInstalledCertificateIds",
                                       {"certificateType": "ManufacturerRootCertificate"}) == {"status": "NotFound"}
            log_types = [e["type"] for e in _security(app).security_log()]
            assert log_types.count("ReconfigurationOfSecurityParameters") == 5   # 3 installed + 2 deleted
        env.csms.assert_no_violations()


async def test_sign_charge_point_certificate_then_certificate_signed(tmp_path: Path) -> None:
    """A02: ExtendedTriggerMessage(SignChargePointCertificate) -> SignCertificate.req with a CSR
    (CN = charge point id, O = CpoName); the CA's answer in CertificateSigned is verified:
    a certificate from an unknown CA is Rejected with InvalidChargePointCertificate (A02.FR.07),
    the right one Accepted and used as the client certificate (A02.FR.08)."""
    async with charger_env(tmp_path) as env:
        csrs: list[x509.CertificateSigningRequest] = []

        def sign_certificate(cp_id: str, payload: dict[str, Any]) -> dict[str, Any]:
            csrs.append(x509.load_pem_x509_csr(payload["csr"].encode()))
            return {"status": "Accepted"}

        env.csms.responders["SignCertificate"] = sign_certificate
        async with env.app() as app:
            await _registered(app)
            trigger = {"requestedMessage": "SignChargePointCertificate"}
            # Prerequisite: CpoName set (A02).
            assert await env.csms.call(CP_ID, "ExtendedTriggerMessage", trigger) == {"status": "Rejected"}
            await env.csms.call(CP_ID, "ChangeConfiguration", {"key": "CpoName", "value": "Example CPO"})
            assert await env.csms.call(CP_ID, "ExtendedTriggerMessage", trigger) == {"status": "Accepted"}
            await eventually(lambda: bool(csrs), timeout_s=20, message="SignCertificate.req")
            csr = csrs[0]
            assert csr.is_signature_valid
            assert csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == CP_ID
            assert csr.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value == "Example CPO"
            assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)

            def signed_by(ca_cert: x509.Certificate, ca_key: Any) -> str:
                now = dt.datetime.now(dt.UTC)
                cert = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca_cert.subject)
                        .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=90))
                        .sign(ca_key, hashes.SHA256()))
                return _pem(cert)

            rogue_ca, rogue_key = make_ca("rogue CA")
            rejected = await env.csms.call(CP_ID, "CertificateSigned",
                                           {"certificateChain": signed_by(rogue_ca, rogue_key)})
            assert rejected == {"status": "Rejected"}
            assert "InvalidChargePointCertificate" in [e["type"] for e in _security(app).security_log()]
            assert _security(app).client_certificate() is None

            # The central system's CA (the root the charger already trusts for the link) signs it.
            pki = env.csms.pki
            ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
            ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
            accepted = await env.csms.call(CP_ID, "CertificateSigned",
                                           {"certificateChain": signed_by(ca_cert, ca_key)})
            assert accepted == {"status": "Accepted"}
            client = _security(app).client_certificate()
            assert client is not None
            cert_path, key_path = client
            stored = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            assert stored.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
            assert key_path.stat().st_mode & 0o077 == 0     # A02.FR.05: the private key stays private
            assert (await env.astatus())["security"]["client_certificate"] == str(cert_path)
            # A second CertificateSigned without a new CSR is refused: the key is used up.
            again = await env.csms.call(CP_ID, "CertificateSigned", {"certificateChain": signed_by(ca_cert, ca_key)})
            assert again == {"status": "Rejected"}
        env.csms.assert_no_violations()


# ---------------------------------------------------------------------- signed firmware (L01)


def _manufacturer(kind: str) -> tuple[x509.Certificate, x509.Certificate, Any]:
    """A manufacturer root and a firmware signing certificate issued directly by it."""
    root, root_key = make_ca("Manufacturer root")
    signing, signing_key = issue(root, root_key, "firmware signing", rsa=kind != "ecdsa")
    return root, signing, signing_key


def _sign(key: Any, data: bytes, kind: str) -> str:
    if kind == "ecdsa":
        signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
    elif kind == "rsa-pss":
        signature = key.sign(data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                               salt_length=padding.PSS.MAX_LENGTH), hashes.SHA256())
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode()


@pytest.mark.parametrize("kind", ["ecdsa", "rsa-pss"])
async def test_signed_update_firmware_with_a_valid_signature_is_installed(tmp_path: Path, kind: str) -> None:
    """L01: Downloading, Downloaded, SignatureVerified, Installing, InstallRebooting (all with
    the requestId, L01.FR.10), then Installed after the restart; Idle when triggered after
    Installed (L01.FR.28). With a manufacturer root installed, the unsigned UpdateFirmware is
    NotSupported (L01.FR.20)."""
    root, signing, signing_key = _manufacturer(kind)
    image = firmware_tar_gz()
    with FileServer() as files:
        files.files["/fw/chargepoint-7.0.0.tar.gz"] = image
        async with charger_env(tmp_path) as env:
            async with env.app() as app:
                await _registered(app)
                assert (await env.csms.call(CP_ID, "InstallCertificate", {
                    "certificateType": "ManufacturerRootCertificate", "certificate": _pem(root)}))["status"] \
                    == "Accepted"
                with pytest.raises(CallErrorResponse) as refused:
                    await env.csms.call(CP_ID, "UpdateFirmware", {
                        "location": files.url("/fw/chargepoint-7.0.0.tar.gz"), "retrieveDate": _iso(-5)})
                assert refused.value.code == "NotSupported"
                conf = await env.csms.call(CP_ID, "SignedUpdateFirmware", {"requestId": 42, "firmware": {
                    "location": files.url("/fw/chargepoint-7.0.0.tar.gz"), "retrieveDateTime": _iso(-5),
                    "signingCertificate": _pem(signing), "signature": _sign(signing_key, image, kind)}})
                assert conf == {"status": "Accepted"}
                await eventually(lambda: app.restart_requested, timeout_s=20)
                sent = [r.payload for r in env.csms.received_of("SignedFirmwareStatusNotification")]
                assert [p["status"] for p in sent] == ["Downloading", "Downloaded", "SignatureVerified",
                                                        "Installing", "InstallRebooting"]
                assert {p["requestId"] for p in sent} == {42}
                assert not env.csms.received_of("FirmwareStatusNotification")
            mark = len(env.csms.received)
            async with env.app() as app:
                boot = await env.csms.wait_for("BootNotification", after_index=mark, timeout_s=20)
                assert boot.payload["firmwareVersion"] == "chargepoint-7.0.0"
                installed = await env.csms.wait_for("SignedFirmwareStatusNotification", after_index=mark)
                assert installed.payload == {"status": "Installed", "requestId": 42}
                before = len(env.csms.received)
                assert await env.csms.call(CP_ID, "ExtendedTriggerMessage",
                                           {"requestedMessage": "FirmwareStatusNotification"}) == {"status": "Accepted"}
                idle = await env.csms.wait_for("SignedFirmwareStatusNotification", after_index=before)
                assert idle.payload == {"status": "Idle"}
            env.csms.assert_no_violations()


async def test_signed_update_firmware_with_a_bad_signature_or_certificate_is_refused(tmp_path: Path) -> None:
    """L01.FR.03: InvalidSignature + InvalidFirmwareSignature event, nothing installed;
    L01.FR.24 / L01.FR.02: a signing certificate not from the manufacturer root is answered
    InvalidCertificate + InvalidFirmwareSigningCertificate, nothing downloaded; L01.FR.29: a
    trigger repeats the last status."""
    root, signing, signing_key = _manufacturer("ecdsa")
    other_root, other_key = make_ca("someone else")
    impostor, impostor_key = issue(other_root, other_key, "firmware signing")
    image = firmware_tar_gz()
    with FileServer() as files:
        files.files["/fw/chargepoint-8.0.0.tar.gz"] = image
        async with charger_env(tmp_path) as env:
            async with env.app() as app:
                await _registered(app)
                await env.csms.call(CP_ID, "InstallCertificate", {
                    "certificateType": "ManufacturerRootCertificate", "certificate": _pem(root)})
                firmware = {"location": files.url("/fw/chargepoint-8.0.0.tar.gz"), "retrieveDateTime": _iso(-5)}
                conf = await env.csms.call(CP_ID, "SignedUpdateFirmware", {"requestId": 7, "firmware": {
                    **firmware, "signingCertificate": _pem(impostor),
                    "signature": _sign(impostor_key, image, "ecdsa")}})
                assert conf == {"status": "InvalidCertificate"}
                await env.csms.wait_for("SecurityEventNotification",
                                        lambda p: p["type"] == "InvalidFirmwareSigningCertificate")
                assert files.count("GET", "/fw/chargepoint-8.0.0.tar.gz") == 0

                conf = await env.csms.call(CP_ID, "SignedUpdateFirmware", {"requestId": 8, "firmware": {
                    **firmware, "signingCertificate": _pem(signing),
                    "signature": _sign(signing_key, image + b"tampered", "ecdsa")}})
                assert conf == {"status": "Accepted"}
                await env.csms.wait_for("SignedFirmwareStatusNotification",
                                        lambda p: p["status"] == "InvalidSignature", timeout_s=20)
                await env.csms.wait_for("SecurityEventNotification", lambda p: p["type"] == "InvalidFirmwareSignature")
                statuses = [r.payload["status"] for r in env.csms.received_of("SignedFirmwareStatusNotification")]
                assert statuses == ["Downloading", "Downloaded", "InvalidSignature"]
                assert not app.restart_requested and app.firmware_version() == "0.1.0"
                before = len(env.csms.received)
                await env.csms.call(CP_ID, "ExtendedTriggerMessage", {"requestedMessage": "FirmwareStatusNotification"})
                last = await env.csms.wait_for("SignedFirmwareStatusNotification", after_index=before)
                assert last.payload == {"status": "InvalidSignature", "requestId": 8}
            env.csms.assert_no_violations()


async def test_a_new_signed_update_cancels_the_one_in_progress(tmp_path: Path) -> None:
    """L01.FR.26: AcceptedCanceled when an update is already in progress."""
    root, signing, signing_key = _manufacturer("ecdsa")
    image = firmware_tar_gz()
    with FileServer() as files:
        files.files["/fw/chargepoint-9.0.0.tar.gz"] = image
        async with charger_env(tmp_path) as env:
            async with env.app() as app:
                await _registered(app)
                await env.csms.call(CP_ID, "InstallCertificate", {
                    "certificateType": "ManufacturerRootCertificate", "certificate": _pem(root)})
                firmware = {"location": files.url("/fw/chargepoint-9.0.0.tar.gz"), "signingCertificate": _pem(signing),
                            "signature": _sign(signing_key, image, "ecdsa")}
                first = await env.csms.call(CP_ID, "SignedUpdateFirmware", {
                    "requestId": 1, "firmware": {**firmware, "retrieveDateTime": _iso(3600)}})
                assert first == {"status": "Accepted"}
                scheduled = await env.csms.wait_for("SignedFirmwareStatusNotification")
                assert scheduled.payload == {"status": "DownloadScheduled", "requestId": 1}   # L01.FR.13
                second = await env.csms.call(CP_ID, "SignedUpdateFirmware", {
                    "requestId": 2, "firmware": {**firmware, "retrieveDateTime": _iso(-5)}})
                assert second == {"status": "AcceptedCanceled"}
                await eventually(lambda: app.restart_requested, timeout_s=20)
                ids = [r.payload["requestId"] for r in env.csms.received_of("SignedFirmwareStatusNotification")]
                assert ids[0] == 1 and set(ids[1:]) == {2}
            env.csms.assert_no_violations()


# ---------------------------------------------------------------------- GetLog (N01), ExtendedTriggerMessage


async def test_the_security_log_file_has_one_line_per_event_whatever_the_tech_info(tmp_path: Path) -> None:
    """N01: the uploaded security log; techInfo may carry a certificate subject with a CR/LF."""
    async with charger_env(tmp_path) as env:
        async with env.app() as app:
            security = _security(app)
            security.record("InvalidMessages", "first")
            security.record("ReconfigurationOfSecurityParameters", "CN=evil\nINFO forged\r\nthird")
            text = security.security_log_text()
            events = [e["type"] for e in security.security_log()]
    lines = text.splitlines()
    assert len(lines) == len(events) >= 2
    assert lines[-1].endswith("ReconfigurationOfSecurityParameters CN=evil\\nINFO forged\\r\\nthird")


async def test_get_log_uploads_the_security_log_with_log_status_notifications(tmp_path: Path) -> None:
    """N01: GetLog(SecurityLog) -> filename, LogStatusNotification Uploading then Uploaded with
    the requestId (N01.FR.07-09); the file holds the security events, also the non-critical
    ones (N01.FR.05); a triggered LogStatusNotification when idle is Idle without requestId."""
    with FileServer() as files:
        async with charger_env(tmp_path) as env:
            async with env.app() as app:
                await _registered(app)
                _security(app).record("InvalidMessages", "a malformed frame")
                conf = await env.csms.call(CP_ID, "GetLog", {"logType": "SecurityLog", "requestId": 5,
                                                              "log": {"remoteLocation": files.url("/logs/")}})
                assert conf["status"] == "Accepted"
                await env.csms.wait_for("LogStatusNotification", lambda p: p["status"] == "Uploaded", timeout_s=20)
                sent = [r.payload for r in env.csms.received_of("LogStatusNotification")]
                assert sent == [{"status": "Uploading", "requestId": 5}, {"status": "Uploaded", "requestId": 5}]
                text = files.uploads[f"/logs/{conf['filename']}"].decode()
                assert "StartupOfTheDevice" in text and "InvalidMessages a malformed frame" in text

                diag = await env.csms.call(CP_ID, "GetLog", {"logType": "DiagnosticsLog", "requestId": 6,
                                                              "log": {"remoteLocation": files.url("/logs/")}})
                await env.csms.wait_for("LogStatusNotification", lambda p: p == {"status": "Uploaded", "requestId": 6},
                                        timeout_s=20)
                assert files.uploads[f"/logs/{diag['filename']}"][:2] == b"\x1f\x8b"   # the diagnostics tar.gz

                before = len(env.csms.received)
                assert await env.csms.call(CP_ID, "ExtendedTriggerMessage",
                                           {"requestedMessage": "LogStatusNotification"}) == {"status": "Accepted"}
                idle = await env.csms.wait_for("LogStatusNotification", after_index=before)
                assert idle.payload == {"status": "Idle"}
            env.csms.assert_no_violations()


async def test_extended_trigger_message_sends_the_core_messages_and_rejects_unknown_connectors(
        tmp_path: Path) -> None:
    """§5.5: ExtendedTriggerMessage answers first, then sends the requested message."""
    async with charger_env(tmp_path) as env:
        async with env.app() as app:
            await _registered(app)
            before = len(env.csms.received)
            assert await env.csms.call(CP_ID, "ExtendedTriggerMessage",
                                       {"requestedMessage": "Heartbeat"}) == {"status": "Accepted"}
            await env.csms.wait_for("Heartbeat", after_index=before)
            before = len(env.csms.received)
            assert await env.csms.call(CP_ID, "ExtendedTriggerMessage",
                                       {"requestedMessage": "StatusNotification", "connectorId": 1}) \
                == {"status": "Accepted"}
            status = await env.csms.wait_for("StatusNotification", after_index=before)
            assert status.payload["connectorId"] == 1
            assert await env.csms.call(CP_ID, "ExtendedTriggerMessage",
                                       {"requestedMessage": "StatusNotification", "connectorId": 9}) \
                == {"status": "Rejected"}
        env.csms.assert_no_violations()


async def test_clock_step_while_connected_and_idle_is_pushed_as_setting_system_time(tmp_path: Path) -> None:
    """§8: SettingSystemTime (critical) when NTP steps the system clock, also on a charger that is
    online and idle: the step itself is the event, no link change or other traffic needed."""
    async with charger_env(tmp_path) as env:
        async with env.app() as app:
            await _registered(app)
            await env.csms.wait_for("SecurityEventNotification", lambda p: p["type"] == "StartupOfTheDevice")
            app.clock.apply_offset(2.5, "ntp", stepped=True)
            event = await env.csms.wait_for("SecurityEventNotification",
                                            lambda p: p["type"] == "SettingSystemTime", timeout_s=15)
            assert "+2.500" in event.payload["techInfo"]
        env.csms.assert_no_violations()
