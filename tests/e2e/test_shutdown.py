"""A clean stop (systemd stop, SIGTERM) of the real daemon process.

interfaces.md §2: exit 0 on SIGTERM. OCPP 1.6 §7.x Reason "Reboot": the charge point
is being rebooted; the StopTransaction is queued durably and delivered before exit when
the central system is reachable, never twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.harness import charger_env

pytestmark = pytest.mark.asyncio


async def test_sigterm_stops_the_transaction_with_reason_reboot_and_exits_0(tmp_path: Path) -> None:
    async with charger_env(tmp_path, MeterValueSampleInterval=0) as env:
        env.doc["authorization"] = {"free_vend_id_tag": "FREEVEND"}
        with env.daemon() as proc:
            await asyncio.to_thread(proc.wait_socket, env.socket_path)
            await env.csms.wait_for("StatusNotification", timeout_s=30)
            await env.asim("sim.plug", connector=1)
            start = await env.csms.wait_for("StartTransaction", timeout_s=30)
            await env.csms.wait_for("StatusNotification", lambda p: p["status"] == "Charging", timeout_s=30)
            code = await asyncio.to_thread(proc.terminate)
            assert code == 0, proc.log_text()
        stops = [r for r in env.csms.received if r.action == "StopTransaction"]
        assert len(stops) == 1
        assert stops[0].payload["reason"] == "Reboot"
        assert stops[0].payload["transactionId"] == start.response["transactionId"]  # type: ignore[index]
        assert stops[0].payload["meterStop"] >= start.payload["meterStart"]
        # Restarted with the EV still plugged: free vend starts a new transaction; the old one
        # is never stopped again (the CSMS records a second stop of one id as a violation).
        index = len(env.csms.received)
        with env.daemon() as proc:
            await asyncio.to_thread(proc.wait_socket, env.socket_path)
            await env.csms.wait_for("BootNotification", after_index=index, timeout_s=30)
            again = await env.csms.wait_for("StartTransaction", after_index=index, timeout_s=30)
            await asyncio.to_thread(proc.terminate)
            assert again.response["transactionId"] != start.response["transactionId"]  # type: ignore[index]
        stopped = [r.payload["transactionId"] for r in env.csms.received if r.action == "StopTransaction"]
        assert len(stopped) == len(set(stopped)) == 2
        env.csms.assert_no_violations()
