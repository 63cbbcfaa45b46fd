"""Security profile 3: TLS with a client certificate (Security WP §2.5, A05 upgrade).

The central system requires a client certificate issued by its CA; the charger presents
it, sends no Basic auth password at profile 3, and a SecurityProfile change from 2 to 3
reconnects with the certificate. The profile never goes down (A05.FR.01).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chargepoint.csms.server import CentralSystem, make_server_ssl_context
from chargepoint.devtools.pki import ensure_pki
from tests.support.harness import CP_ID, PASSWORD, ChargerEnv, base_doc
from tests.support.ntp_server import NtpServer

pytestmark = pytest.mark.asyncio


async def _env(tmp_path: Path, *, profile: int) -> tuple[ChargerEnv, CentralSystem, NtpServer]:
    pki = ensure_pki(tmp_path / "pki", client_cn=CP_ID)
    ctx = make_server_ssl_context(pki, client_ca=pki.ca_cert)
    csms = CentralSystem(passwords=None, ssl_context=ctx, pki_dir=tmp_path / "pki")
    await csms.start()
    ntp = NtpServer().start()
    doc = base_doc(tmp_path, csms, ntp)
    doc["tls"] = {"ca_file": str(pki.ca_cert), "client_cert_file": str(pki.client_cert),
                  "client_key_file": str(pki.client_key)}
    doc["ocpp"]["security_profile"] = profile
    return ChargerEnv(tmp_path, csms, ntp, doc), csms, ntp


async def test_profile_3_presents_the_client_certificate_and_no_password(tmp_path: Path) -> None:
    env, csms, ntp = await _env(tmp_path, profile=3)
    try:
        async with env.app():
            info = await csms.wait_connected(CP_ID, timeout_s=20)
            await csms.wait_for("BootNotification", timeout_s=20)
        subject = dict(item[0] for item in info.peer_cert["subject"])
        assert subject["commonName"] == CP_ID
        assert info.authorization is None
    finally:
        ntp.close()
        await csms.stop()


async def test_upgrade_from_profile_2_to_3_reconnects_with_the_certificate(tmp_path: Path) -> None:
    env, csms, ntp = await _env(tmp_path, profile=2)
    try:
        async with env.app() as app:
            first = await csms.wait_connected(CP_ID, timeout_s=20)
            assert first.authorization is not None and PASSWORD not in str(first.peer_cert)
            await csms.wait_for("StatusNotification", timeout_s=20)
            index = len(csms.connections)
            answer = await csms.call(CP_ID, "ChangeConfiguration", {"key": "SecurityProfile", "value": "3"})
            assert answer == {"status": "Accepted"}
            upgraded = await csms.wait_connected(CP_ID, timeout_s=30, after_index=index)
            assert upgraded.authorization is None
            assert dict(item[0] for item in upgraded.peer_cert["subject"])["commonName"] == CP_ID
            down = await csms.call(CP_ID, "ChangeConfiguration", {"key": "SecurityProfile", "value": "2"})
            assert down == {"status": "Rejected"}
            assert app.security_profile() == 3
        # A restart keeps profile 3, even though the file still says 2.
        index = len(csms.connections)
        async with env.app():
            again = await csms.wait_connected(CP_ID, timeout_s=30, after_index=index)
            assert again.authorization is None
    finally:
        ntp.close()
        await csms.stop()
