"""Firmware Management end to end: UpdateFirmware with FirmwareStatusNotification across the
reboot, download retries, installation failures and waiting for transactions, GetDiagnostics
uploads. Real CSMS over wss, a real HTTP server on loopback, SQLite state on disk.

OCPP 1.6 §4.4, §4.5, §5.9, §5.17, §5.19; errata 3.47 (Installed after the reboot), 3.49
(wait for the session to end), 3.50 (retries); field-notes §6 (status lost across the reboot).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from chargepoint.app import ChargePointApp
from tests.e2e.http_files import FileServer, firmware_tar_gz
from tests.support.harness import CP_ID, PASSWORD, ChargerEnv, charger_env, eventually, split_log_lines

pytestmark = pytest.mark.asyncio


def _iso(delta_s: float = 0.0) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delta_s)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


async def _registered(env: ChargerEnv, app: ChargePointApp) -> None:
    await eventually(lambda: app.online, timeout_s=20, message="charger registered")


def _statuses(env: ChargerEnv, action: str = "FirmwareStatusNotification", after_index: int = 0) -> list[str]:
    return [r.payload["status"] for r in env.csms.received_of(action) if r.index >= after_index]


async def test_update_firmware_downloading_downloaded_installing_then_installed_after_the_restart(
        tmp_path: Path) -> None:
    """§5.19 / errata 3.47: the status sequence, the daemon restarts to activate the firmware,
    and the new process reports the new firmwareVersion, then Installed (field-notes §6)."""
    with FileServer() as files:
        files.files["/fw/chargepoint-9.9.9.tar.gz"] = firmware_tar_gz()
        async with charger_env(tmp_path) as env:
            async with env.app() as app:
                await _registered(env, app)
                conf = await env.csms.call(CP_ID, "UpdateFirmware", {
                    "location": files.url("/fw/chargepoint-9.9.9.tar.gz"), "retrieveDate": _iso(-5),
                    "retries": 1, "retryInterval": 1})
                assert conf == {}
                await eventually(lambda: app.restart_requested, timeout_s=20, message="restart requested")
                assert _statuses(env) == ["Downloading", "Downloaded", "Installing"]
                assert files.count("GET", "/fw/chargepoint-9.9.9.tar.gz") == 1
                assert (await env.astatus())["firmware"]["update_phase"] == "rebooting"
            first_boot = env.csms.received_of("BootNotification")[0]
            assert first_boot.payload["firmwareVersion"] == "0.1.0"

            mark = len(env.csms.received)
            async with env.app() as app:   # the same state directory: the process after the restart
                boot = await env.csms.wait_for("BootNotification", after_index=mark, timeout_s=20)
                assert boot.payload["firmwareVersion"] == "chargepoint-9.9.9"
                installed = await env.csms.wait_for("FirmwareStatusNotification", after_index=mark, timeout_s=20)
                assert installed.payload == {"status": "Installed"}
                assert installed.index > boot.index
                updated = await env.csms.wait_for("SecurityEventNotification",
                                                  lambda p: p["type"] == "FirmwareUpdated", after_index=mark)
                assert "chargepoint-9.9.9" in updated.payload["techInfo"]
                assert not app.restart_requested
                # §4.5: Idle on a TriggerMessage once nothing is going on.
                before = len(env.csms.received)
                trigger = await env.csms.call(CP_ID, "TriggerMessage",
                                              {"requestedMessage": "FirmwareStatusNotification"})
                assert trigger == {"status": "Accepted"}
                idle = await env.csms.wait_for("FirmwareStatusNotification", after_index=before)
                assert idle.payload == {"status": "Idle"}
                status = await env.astatus()
                assert status["firmware_version"] == "chargepoint-9.9.9"
                assert status["firmware"]["update_phase"] is None
            assert _statuses(env).count("Installed") == 1
            assert not any((env.state_dir / "firmware").rglob("*.tar.gz"))
            env.csms.assert_no_violations()


async def test_installed_is_delivered_when_the_central_system_comes_back_after_the_restart(
        tmp_path: Path) -> None:
    """The Installed notification waits in the store: the central system is down when the
    new firmware boots, and still gets Installed once it is back (field-notes §6)."""
    with FileServer() as files:
        files.files["/fw/chargepoint-2.0.0.tar.gz"] = firmware_tar_gz()
        async with charger_env(tmp_path) as env:
            async with env.app() as app:
                await _registered(env, app)
                await env.csms.call(CP_ID, "UpdateFirmware", {
                    "location": files.url("/fw/chargepoint-2.0.0.tar.gz"), "retrieveDate": _iso(-5)})
                await eventually(lambda: app.restart_requested, timeout_s=20)
            await env.csms.stop()
            async with env.app() as app:
                await eventually(lambda: app.link.state != "connected", timeout_s=5)
                await env.csms.start()
                mark = len(env.csms.received)
                installed = await env.csms.wait_for("FirmwareStatusNotification", after_index=mark, timeout_s=30)
                assert installed.payload == {"status": "Installed"}
                await eventually(lambda: app.store.kv_get("firmware", "outbox") is None, message="outbox emptied")
            env.csms.assert_no_violations()


async def test_download_failed_after_the_retries_and_the_charger_stays_up(tmp_path: Path) -> None:
    """§6.55 retries/retryInterval: 1 + retries attempts, then DownloadFailed; no restart."""
    with FileServer() as files:
        async with charger_env(tmp_path) as env:
            async with env.app() as app:
                await _registered(env, app)
                await env.csms.call(CP_ID, "UpdateFirmware", {
                    "location": files.url("/fw/missing.tar.gz"), "retrieveDate": _iso(-5),
                    "retries": 2, "retryInterval": 1})
                await env.csms.wait_for("FirmwareStatusNotification", lambda p: p["status"] == "DownloadFailed",
                                        timeout_s=20)
                assert _statuses(env) == ["Downloading", "DownloadFailed"]
                assert files.count("GET", "/fw/missing.tar.gz") == 3
                assert not app.restart_requested
                assert (await env.astatus())["firmware"]["update_phase"] is None
                # Not busy any more: a triggered status is Idle (§4.5), not the old failure.
                before = len(env.csms.received)
                await env.csms.call(CP_ID, "TriggerMessage", {"requestedMessage": "FirmwareStatusNotification"})
                idle = await env.csms.wait_for("FirmwareStatusNotification", after_index=before)
                assert idle.payload == {"status": "Idle"}
            env.csms.assert_no_violations()


async def test_an_invalid_image_is_installation_failed_and_the_version_is_unchanged(tmp_path: Path) -> None:
    with FileServer() as files:
        files.files["/fw/chargepoint-3.0.0.tar.gz"] = b"this is not a gzip'd tar"
        async with charger_env(tmp_path) as env:
            async with env.app() as app:
                await _registered(env, app)
                await env.csms.call(CP_ID, "UpdateFirmware", {
                    "location": files.url("/fw/chargepoint-3.0.0.tar.gz"), "retrieveDate": _iso(-5)})
                await env.csms.wait_for("FirmwareStatusNotification",
                                        lambda p: p["status"] == "InstallationFailed", timeout_s=20)
                assert _statuses(env) == ["Downloading", "Downloaded", "Installing", "InstallationFailed"]
                assert not app.restart_requested
                assert app.firmware_version() == "0.1.0"
            env.csms.assert_no_violations()


async def test_download_waits_for_the_retrieve_date(tmp_path: Path) -> None:
    """§6.55 retrieveDate: the date after which the charger is allowed to retrieve it (errata 3.63)."""
    with FileServer() as files:
        files.files["/fw/chargepoint-4.0.0.tar.gz"] = firmware_tar_gz()
        async with charger_env(tmp_path) as env:
            async with env.app() as app:
                await _registered(env, app)
                asked_at_s = time.monotonic()
                retrieve = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
                await env.csms.call(CP_ID, "UpdateFirmware", {
                    "location": files.url("/fw/chargepoint-4.0.0.tar.gz"),
                    "retrieveDate": retrieve.strftime("%Y-%m-%dT%H:%M:%S.%fZ")})
                await eventually(lambda: app.restart_requested, timeout_s=20)
                assert files.count("GET", "/fw/chargepoint-4.0.0.tar.gz") == 1
                downloading = env.csms.received_of("FirmwareStatusNotification")[0]
                assert downloading.payload["status"] == "Downloading"
                # Not before retrieveDate (a lower bound: a slow machine cannot make this fail).
                assert downloading.time_monotonic >= asked_at_s + 2.0 - 0.1
            env.csms.assert_no_violations()


@pytest.mark.parametrize("retrieve_date", ["9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59.999999Z"])
async def test_a_retrieve_date_beyond_year_9999_in_utc_is_accepted_and_waited_for(
        tmp_path: Path, retrieve_date: str) -> None:
    """§6.55: UpdateFirmware.conf has no status, so a valid retrieveDate however far away is
    taken and waited for. Year 10000 in UTC was answered InternalError (found by the schema fuzz)."""
    with FileServer() as files:
        files.files["/fw/chargepoint-4.1.0.tar.gz"] = firmware_tar_gz()
        async with charger_env(tmp_path) as env:
            async with env.app() as app:
                await _registered(env, app)
                conf = await env.csms.call(CP_ID, "UpdateFirmware", {
                    "location": files.url("/fw/chargepoint-4.1.0.tar.gz"), "retrieveDate": retrieve_date})
                assert conf == {}
                await eventually(lambda: app.store.kv_get("firmware", "job") is not None,
                                 message="the update is scheduled")
                assert (await env.astatus())["firmware"]["update_phase"] == "scheduled"
                assert files.count("GET", "/fw/chargepoint-4.1.0.tar.gz") == 0
                assert _statuses(env) == []
            env.csms.assert_no_violations()


async def test_a_location_with_line_breaks_stays_on_one_log_line(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """UpdateFirmware / GetDiagnostics locations are the central system's text (format "uri" is
    not checked): logged raw, a CR/LF in one forged a log line (one line per event)."""
    caplog.set_level(logging.INFO, logger="chargepoint")
    location = "http://127.0.0.1:9/fw\nINFO forged"
    async with charger_env(tmp_path) as env:
        async with env.app() as app:
            await _registered(env, app)
            assert await env.csms.call(CP_ID, "UpdateFirmware", {
                "location": location, "retrieveDate": "2999-01-01T00:00:00Z"}) == {}
            conf = await env.csms.call(CP_ID, "GetDiagnostics", {"location": location, "retries": 0})
            assert "fileName" in conf
            await env.csms.wait_for("DiagnosticsStatusNotification", lambda p: p["status"] == "UploadFailed",
                                    timeout_s=20)
        env.csms.assert_no_violations()
    lines = [r.getMessage() for r in caplog.records if r.name == "chargepoint.firmware"]
    assert any(repr(location) in line and "UpdateFirmware" in line for line in lines), lines
    assert any(repr(location) in line and "GetDiagnostics" in line for line in lines), lines
    split = split_log_lines(caplog.records)
    assert not split, split


async def _charging_on_connector_1(env: ChargerEnv, app: ChargePointApp) -> int:
    """Registered, an EV charging on connector 1 after a RemoteStartTransaction: its transactionId."""
    await _registered(env, app)
    await env.asim("sim.plug", connector=1)
    assert (await env.csms.call(CP_ID, "RemoteStartTransaction",
                                {"idTag": "TAG1", "connectorId": 1}))["status"] == "Accepted"
    start = await env.csms.wait_for("StartTransaction", timeout_s=20)
    tx_id = start.response["transactionId"] if start.response else None
    assert isinstance(tx_id, int)
    return tx_id


async def test_installation_waits_for_the_transaction_to_end_and_idle_connectors_are_unavailable(
        tmp_path: Path) -> None:
    """Errata 3.49 / Security WP L01.FR.06-07: no installation during a charging session;
    meanwhile connectors not in use are Unavailable; installation once the session ended."""
    with FileServer() as files:
        files.files["/fw/chargepoint-5.0.0.tar.gz"] = firmware_tar_gz()
        async with charger_env(tmp_path, AuthorizeRemoteTxRequests=False) as env:
            env.doc["connector"] = [{"max_current_a": 32, "phases": 3}, {"max_current_a": 32, "phases": 3}]
            async with env.app() as app:
                tx_id = await _charging_on_connector_1(env, app)
                await env.csms.call(CP_ID, "UpdateFirmware", {
                    "location": files.url("/fw/chargepoint-5.0.0.tar.gz"), "retrieveDate": _iso(-5)})
                await env.csms.wait_for("FirmwareStatusNotification", lambda p: p["status"] == "Downloaded",
                                        timeout_s=20)
                # The free connector goes Unavailable while the installation waits.
                await env.csms.wait_for("StatusNotification",
                                        lambda p: p["connectorId"] == 2 and p["status"] == "Unavailable",
                                        timeout_s=20)
                assert "Installing" not in _statuses(env)
                assert not app.restart_requested
                assert env.csms.connector_status(CP_ID, 1) != "Unavailable"
                await env.csms.call(CP_ID, "RemoteStopTransaction", {"transactionId": tx_id})
                stop = await env.csms.wait_for("StopTransaction", timeout_s=20)
                await eventually(lambda: app.restart_requested, timeout_s=20)
                installing = await env.csms.wait_for("FirmwareStatusNotification",
                                                     lambda p: p["status"] == "Installing")
                assert installing.index > stop.index
            env.csms.assert_no_violations()


async def test_a_preparing_connector_is_made_unavailable_only_once_available_4_9_no_b8(tmp_path: Path) -> None:
    """While the installation waits for a transaction, an EV plugged into the free connector
    without a card keeps it Preparing: §4.9 has no Preparing -> Unavailable, so it goes
    Unavailable only after it is Available again (B1, A8)."""
    with FileServer() as files:
        files.files["/fw/chargepoint-5.1.0.tar.gz"] = firmware_tar_gz()
        async with charger_env(tmp_path, AuthorizeRemoteTxRequests=False) as env:
            env.doc["connector"] = [{"max_current_a": 32, "phases": 3}, {"max_current_a": 32, "phases": 3}]
            async with env.app() as app:
                tx_id = await _charging_on_connector_1(env, app)
                await env.asim("sim.plug", connector=2)
                await env.csms.wait_for("StatusNotification",
                                        lambda p: p["connectorId"] == 2 and p["status"] == "Preparing", timeout_s=20)
                await env.csms.call(CP_ID, "UpdateFirmware", {
                    "location": files.url("/fw/chargepoint-5.1.0.tar.gz"), "retrieveDate": _iso(-5)})
                await env.csms.wait_for("FirmwareStatusNotification", lambda p: p["status"] == "Downloaded",
                                        timeout_s=20)
                await eventually(lambda: app.firmware._unavailable_wanted, timeout_s=20)
                assert env.csms.connector_status(CP_ID, 2) == "Preparing"
                mark = len(env.csms.received)
                await env.asim("sim.unplug", connector=2)
                unavailable = await env.csms.wait_for(
                    "StatusNotification", lambda p: p["connectorId"] == 2 and p["status"] == "Unavailable",
                    after_index=mark, timeout_s=20)
                statuses_2 = [r.payload["status"] for r in env.csms.received[mark:unavailable.index + 1]
                              if r.action == "StatusNotification" and r.payload["connectorId"] == 2]
                assert statuses_2 == ["Available", "Unavailable"]
                await env.csms.call(CP_ID, "RemoteStopTransaction", {"transactionId": tx_id})
                await eventually(lambda: app.restart_requested, timeout_s=20)
            env.csms.assert_no_violations()


async def test_firmware_update_resumes_after_a_restart_before_the_download(tmp_path: Path) -> None:
    """The update is persisted: a restart while it waits for retrieveDate resumes it."""
    with FileServer() as files:
        files.files["/fw/chargepoint-6.0.0.tar.gz"] = firmware_tar_gz()
        async with charger_env(tmp_path) as env:
            async with env.app() as app:
                await _registered(env, app)
                await env.csms.call(CP_ID, "UpdateFirmware", {
                    "location": files.url("/fw/chargepoint-6.0.0.tar.gz"), "retrieveDate": _iso(3)})
                await eventually(lambda: app.store.kv_get("firmware", "job") is not None)
            assert files.count("GET", "/fw/chargepoint-6.0.0.tar.gz") == 0
            async with env.app() as app:
                await eventually(lambda: app.restart_requested, timeout_s=25)
                assert files.count("GET", "/fw/chargepoint-6.0.0.tar.gz") == 1
            env.csms.assert_no_violations()


# ---------------------------------------------------------------------- GetDiagnostics


def _members(data: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        out: dict[str, str] = {}
        for member in tar.getmembers():
            handle = tar.extractfile(member)
            assert handle is not None
            out[member.name] = handle.read().decode()
        return out


async def test_get_diagnostics_uploads_log_lines_status_and_configuration_and_never_the_password(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """§5.9: fileName in the answer, one file uploaded to location, Uploading then Uploaded
    (errata 3.31). Security WP A01.FR.12: the AuthorizationKey never in a diagnostics file."""
    caplog.set_level(logging.INFO, logger="chargepoint")
    with FileServer() as files:
        async with charger_env(tmp_path) as env:
            async with env.app() as app:
                await _registered(env, app)
                # A careless log line must still not leak the password into the upload.
                logging.getLogger("chargepoint.test").warning("debug aid that should never exist: %s", PASSWORD)
                conf = await env.csms.call(CP_ID, "GetDiagnostics", {"location": files.url("/diag/")})
                name = conf["fileName"]
                assert name.endswith(".tar.gz") and CP_ID in name
                await env.csms.wait_for("DiagnosticsStatusNotification", lambda p: p["status"] == "Uploaded",
                                        timeout_s=20)
                assert _statuses(env, "DiagnosticsStatusNotification") == ["Uploading", "Uploaded"]
                data = files.uploads[f"/diag/{name}"]
                members = _members(data)
                assert set(members) >= {"log.txt", "status.json", "configuration.json"}
                for text in members.values():
                    assert PASSWORD not in text
                assert "BootNotification Accepted" in members["log.txt"]
                config = json.loads(members["configuration.json"])
                keys = {entry["key"] for entry in config["configurationKey"]}
                assert "HeartbeatInterval" in keys and "AuthorizationKey" not in keys
                assert json.loads(members["status.json"])["charge_point_id"] == CP_ID
                # §4.4: Idle on a TriggerMessage when not uploading.
                before = len(env.csms.received)
                await env.csms.call(CP_ID, "TriggerMessage", {"requestedMessage": "DiagnosticsStatusNotification"})
                idle = await env.csms.wait_for("DiagnosticsStatusNotification", after_index=before)
                assert idle.payload == {"status": "Idle"}
            env.csms.assert_no_violations()


async def test_get_diagnostics_start_and_stop_time_select_the_log_lines(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """§6.25 startTime/stopTime: the oldest and latest logging information to include."""
    caplog.set_level(logging.INFO, logger="chargepoint")
    with FileServer() as files:
        async with charger_env(tmp_path) as env:
            async with env.app() as app:
                await _registered(env, app)
                logging.getLogger("chargepoint.test").info("marker line")
                window: dict[str, Any] = {"startTime": _iso(3600), "stopTime": _iso(7200)}
                later = await env.csms.call(CP_ID, "GetDiagnostics", {"location": files.url("/d/"), **window})
                await env.csms.wait_for("DiagnosticsStatusNotification", lambda p: p["status"] == "Uploaded",
                                        timeout_s=20)
                assert _members(files.uploads[f"/d/{later['fileName']}"])["log.txt"] == ""
                before = len(env.csms.received)
                recent = await env.csms.call(CP_ID, "GetDiagnostics",
                                             {"location": files.url("/d/"), "startTime": _iso(-60)})
                await env.csms.wait_for("DiagnosticsStatusNotification", lambda p: p["status"] == "Uploaded",
                                        after_index=before, timeout_s=20)
                assert "marker line" in _members(files.uploads[f"/d/{recent['fileName']}"])["log.txt"]
            env.csms.assert_no_violations()


async def test_get_diagnostics_upload_failed_after_the_retries(tmp_path: Path) -> None:
    with FileServer() as files:
        files.upload_status = 500
        async with charger_env(tmp_path) as env:
            async with env.app() as app:
                await _registered(env, app)
                await env.csms.call(CP_ID, "GetDiagnostics",
                                    {"location": files.url("/diag/"), "retries": 1, "retryInterval": 1})
                await env.csms.wait_for("DiagnosticsStatusNotification", lambda p: p["status"] == "UploadFailed",
                                        timeout_s=20)
                assert _statuses(env, "DiagnosticsStatusNotification") == ["Uploading", "UploadFailed"]
                assert sum(1 for method, _ in files.requests if method == "PUT") == 2
            env.csms.assert_no_violations()


async def test_get_diagnostics_posts_when_the_server_refuses_put(tmp_path: Path) -> None:
    with FileServer() as files:
        files.allow_put = False
        async with charger_env(tmp_path) as env:
            async with env.app() as app:
                await _registered(env, app)
                conf = await env.csms.call(CP_ID, "GetDiagnostics", {"location": files.url("/diag")})
                await env.csms.wait_for("DiagnosticsStatusNotification", lambda p: p["status"] == "Uploaded",
                                        timeout_s=20)
                assert f"/diag/{conf['fileName']}" in files.uploads
                assert ("POST", f"/diag/{conf['fileName']}") in files.requests
            env.csms.assert_no_violations()


@pytest.mark.slow
async def test_the_real_daemon_restarts_into_the_new_firmware_and_reports_installed(tmp_path: Path) -> None:
    """The whole reboot path with the real daemon process: it re-executes itself (same pid),
    registers with the new firmwareVersion and sends Installed exactly once."""
    with FileServer() as files:
        files.files["/fw/chargepoint-10.0.0.tar.gz"] = firmware_tar_gz()
        async with charger_env(tmp_path) as env:
            with env.daemon() as proc:
                await env.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1, timeout_s=30)
                assert proc.proc is not None
                pid = proc.proc.pid
                await env.csms.call(CP_ID, "UpdateFirmware", {
                    "location": files.url("/fw/chargepoint-10.0.0.tar.gz"), "retrieveDate": _iso(-5)})
                boot = await env.csms.wait_for("BootNotification", lambda p: p["firmwareVersion"] ==
                                               "chargepoint-10.0.0", timeout_s=40)
                installed = await env.csms.wait_for("FirmwareStatusNotification",
                                                    lambda p: p["status"] == "Installed", timeout_s=30)
                assert installed.index > boot.index
                assert proc.proc.poll() is None and proc.proc.pid == pid   # re-executed in place
                assert _statuses(env) == ["Downloading", "Downloaded", "Installing", "Installed"]
            env.csms.assert_no_violations()
