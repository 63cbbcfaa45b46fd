"""The daemon's idle memory: `cryptography` (~7 MB RSS) is loaded by the first certificate
operation, never by start-up or by a charger that has no certificate files (issue: idle RSS).

Each check runs in a fresh interpreter: this test process has imported cryptography already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import asyncio, json, sys
from chargepoint.config import parse_settings

STATE = sys.argv[1]
STEP = sys.argv[2]

def loaded() -> bool:
    return any(m == "cryptography" or m.startswith("cryptography.") for m in sys.modules)

async def main() -> dict:
    from chargepoint.app import ChargePointApp
    from chargepoint.services.security import SecurityService
    doc = {"ocpp": {"url": "wss://127.0.0.1:9/ocpp", "charge_point_id": "CP-LAZY",
                    "password": "0123456789abcdef0123"},
           "storage": {"state_dir": STATE + "/state"}, "control": {"socket": STATE + "/control.sock"},
           "hal": {"backend": "sim"}, "ntp": {"servers": ["127.0.0.1:9"], "set_clock": False}}
    app = ChargePointApp(parse_settings(doc))
    security = app.service(SecurityService)
    out = {"after_start": loaded()}
    try:
        out["status_security"] = app.status()["security"]
        out["ssl_context_built"] = app.ssl_context() is not None
        out["requires_signed_firmware"] = security.requires_signed_firmware()
        out["installed_ids"] = await security.on_get_installed_certificate_ids(
            {"certificateType": "CentralSystemRootCertificate"})
        out["after_idle_paths"] = loaded()
        if STEP == "install":
            from chargepoint.devtools.pki import make_ca
            from cryptography.hazmat.primitives import serialization
            ca, _ = make_ca("lazy test root")
            pem = ca.public_bytes(serialization.Encoding.PEM).decode()
            out["install"] = await security.on_install_certificate(
                {"certificateType": "CentralSystemRootCertificate", "certificate": pem})
            out["installed_ids"] = await security.on_get_installed_certificate_ids(
                {"certificateType": "CentralSystemRootCertificate"})
    finally:
        app.store.close()
    return out

print(json.dumps(asyncio.run(main())))
"""


def _run(tmp_path: Path, step: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path), step], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_start_status_tls_and_empty_certificate_queries_do_not_load_cryptography(tmp_path: Path) -> None:
    out = _run(tmp_path, "idle")
    assert out["after_start"] is False
    assert out["status_security"] == {"client_certificate": None, "central_system_roots": 0, "manufacturer_roots": 0}
    assert out["ssl_context_built"] is True
    assert out["requires_signed_firmware"] is False
    assert out["installed_ids"] == {"status": "NotFound"}   # Security WP M03.FR.02
    assert out["after_idle_paths"] is False


def test_install_certificate_loads_the_certificate_logic_and_the_root_is_listed(tmp_path: Path) -> None:
    out = _run(tmp_path, "install")
    assert out["after_idle_paths"] is False
    assert out["install"] == {"status": "Accepted"}   # Security WP M05
    ids = out["installed_ids"]
    assert isinstance(ids, dict) and ids["status"] == "Accepted"
    assert len(ids["certificateHashData"]) == 1
