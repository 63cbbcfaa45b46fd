"""`python -m chargepoint.csms`: the standalone central system for field engineers."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import ssl
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from chargepoint.csms.__main__ import parse_args

from .conftest import BOOT, PASSWORD


def test_password_arguments_are_cp_equals_password() -> None:
    args = parse_args(["--password", "CP-1=abc", "--password", "CP 2=x=y", "--port", "0"])
    assert dict(args.password) == {"CP-1": "abc", "CP 2": "x=y"}
    with pytest.raises(SystemExit):
        parse_args(["--password", "nopassword"])


@pytest.mark.asyncio
async def test_standalone_prints_url_and_ca_logs_messages_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chargepoint.csms", "--port", "0", "--pki-dir", str(tmp_path / "pki"),
        "--password", f"CP-1={PASSWORD}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        url_line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        ca_line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        url = url_line.split()[4]
        ca_file = Path(ca_line.removeprefix("CA file:").strip())
        assert url.startswith("wss://127.0.0.1:") and url.endswith("/ocpp")
        assert ca_file == tmp_path / "pki" / "ca.pem"
        auth = "Basic " + base64.b64encode(f"CP-1:{PASSWORD}".encode()).decode()
        async with connect(f"{url}/CP-1", ssl=ssl.create_default_context(cafile=str(ca_file)), proxy=None,
                           subprotocols=[Subprotocol("ocpp1.6")], additional_headers={"Authorization": auth}) as ws:
            await ws.send(json.dumps([2, "b1", "BootNotification", BOOT]))
            answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert answer[0] == 3 and answer[2]["status"] == "Accepted"
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        log = (await proc.stderr.read()).decode()
        assert "CP-1 <- BootNotification" in log and "Traceback" not in log
        assert PASSWORD not in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
