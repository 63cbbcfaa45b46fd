"""`make run`: the daemon's main job on the embedded default, narrated for a person watching.

Starts the bundled central system (wss on localhost:8443, certificates generated on
first use, Basic auth) and a local NTP responder, then the real daemon
(`chargepoint run --config config/sim.toml`) on simulated EVSE hardware (its meter
served as an SDM630 on Modbus TCP 127.0.0.1:15020 and read through pymodbus), and
plays a charging session: plug in, present a card, charge under a
smart-charging schedule that lowers, pauses and raises the limit, ride out a
central-system outage (transaction messages queue durably and drain in order),
stop and unplug. Then it keeps showing the charger's state until Ctrl-C, which
stops everything cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from chargepoint.config import load_settings
from chargepoint.control import request
from chargepoint.csms.server import CentralSystem
from chargepoint.devtools.ntp_server import NtpServer

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "sim.toml"
DEMO_DIR = REPO / "demo-state"
CARD = "DEMO-CARD-01"


def say(text: str) -> None:
    print(f"\033[1m{time.strftime('%H:%M:%S')}  {text}\033[0m", flush=True)


def line(status: dict[str, Any]) -> str:
    c = status["connectors"][0]
    meter = c.get("meter") or {}
    limit = c.get("limit") or {}
    return (f"  {status['connection']:<10} {c['status']:<14} CP {c.get('cp_state') or '-'}  "
            f"duty {c['pilot_duty_percent']:5.1f} %  offer {c['offered_current_a']:4.1f} A  "
            f"limit {limit.get('current_a', '-')!s:>5} ({limit.get('source') or 'none'})  "
            f"{meter.get('power_w', 0):7.0f} W  {meter.get('energy_wh', 0):8.1f} Wh  "
            f"tx {c.get('transaction_id') or '-'}  queue {status['queue']['pending']}")


class Demo:
    def __init__(self) -> None:
        self.settings = load_settings(CONFIG)
        url = urlsplit(self.settings.ocpp.url)
        self.port = url.port or 443
        self.cp_id = self.settings.ocpp.charge_point_id
        self.socket = self.settings.control.socket
        self.csms = CentralSystem(passwords={self.cp_id: self.settings.ocpp.password or ""},
                                  pki_dir=DEMO_DIR / "pki", heartbeat_interval_s=60)
        self.csms.log_messages = False
        ntp_host, ntp_port = self.settings.ntp.servers[0]
        self.ntp = NtpServer(host=ntp_host, port=ntp_port)
        self.daemon: subprocess.Popen[bytes] | None = None
        self._seen = 0
        self._stopped = False

    def ctl(self, cmd: str, **params: Any) -> dict[str, Any]:
        return request(self.socket, {"cmd": cmd, **params})

    async def actl(self, cmd: str, **params: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.ctl, cmd, **params)

    async def status(self) -> dict[str, Any]:
        response = await self.actl("status")
        result: dict[str, Any] = response["result"]
        return result

    def narrate_messages(self) -> None:
        """One line per message the central system received."""
        for received in self.csms.received[self._seen:]:
            p = received.payload
            detail = ""
            if received.action == "StatusNotification":
                detail = f"connector {p['connectorId']} {p['status']} ({p['errorCode']})"
            elif received.action == "MeterValues":
                values = {v.get("measurand", "Energy.Active.Import.Register"): v["value"]
                          for mv in p["meterValue"] for v in mv["sampledValue"] if "phase" not in v}
                detail = f"tx {p.get('transactionId')} at {p['meterValue'][0]['timestamp']}: " + ", ".join(
                    f"{k.split('.')[0]}={v}" for k, v in values.items())
            elif received.action == "StartTransaction":
                detail = f"idTag {p['idTag']} meterStart {p['meterStart']} Wh"
            elif received.action == "StopTransaction":
                detail = f"tx {p['transactionId']} meterStop {p['meterStop']} Wh reason {p.get('reason', 'Local')}"
            elif received.action in ("Authorize",):
                detail = f"idTag {p['idTag']}"
            print(f"    <- {received.action} {detail}", flush=True)
        self._seen = len(self.csms.received)

    async def watch(self, seconds: float, every_s: float = 2.0) -> None:
        await self.watch_until(lambda _status: False, seconds, every_s)

    async def watch_until(self, done: Any, timeout_s: float, every_s: float = 2.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.narrate_messages()
            with contextlib.suppress(OSError, KeyError):
                status = await self.status()
                print(line(status), flush=True)
                if done(status):
                    break
            await asyncio.sleep(min(every_s, max(0.0, deadline - time.monotonic())))
        self.narrate_messages()

    def profile(self, transaction_id: int | None) -> dict[str, Any]:
        start = dt.datetime.now(dt.UTC).replace(microsecond=0)
        profile: dict[str, Any] = {
            "chargingProfileId": 100, "stackLevel": 1, "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "chargingRateUnit": "A", "startSchedule": start.isoformat().replace("+00:00", "Z"),
                "chargingSchedulePeriod": [
                    {"startPeriod": 0, "limit": 16.0}, {"startPeriod": 20, "limit": 8.0},
                    {"startPeriod": 40, "limit": 0.0}, {"startPeriod": 55, "limit": 24.0}]}}
        if transaction_id is not None:
            profile["transactionId"] = transaction_id
        return {"connectorId": 1, "csChargingProfiles": profile}

    async def scenario(self) -> None:
        say("waiting for the charger to register ...")
        await self.csms.wait_for("BootNotification", timeout_s=60)
        await self.csms.wait_for("StatusNotification", timeout_s=30)
        await self.watch(2)
        say("an EV is plugged into connector 1 (sim plug 1)")
        await self.actl("sim.plug", connector=1)
        await self.watch(3)
        say(f"the driver presents card {CARD} (sim swipe {CARD})")
        await self.actl("sim.swipe", id_tag=CARD, connector=1)
        start = await self.csms.wait_for("StartTransaction", timeout_s=30)
        await self.watch(4)
        tx_id = next((t for t, rec in self.csms.transactions.items() if rec.start is start.payload), None)
        if tx_id is None and self.csms.transactions:
            tx_id = max(self.csms.transactions)
        say("the platform caps charging: TxProfile 16 A now, 8 A after 20 s, pause (0 A) at 40 s, 24 A at 55 s")
        answer = await self.csms.call(self.cp_id, "SetChargingProfile", self.profile(tx_id))
        say(f"SetChargingProfile -> {answer['status']}")
        await self.watch(62)
        say("the central system goes down for 20 s: transaction messages queue on the charger's disk")
        await self.csms.stop()
        await self.watch(20)
        say("the central system is back; the charger reconnects after its back-off and drains the queue in order")
        await self.csms.start(port=self.port)
        await self.watch_until(lambda s: s["connection"] == "connected" and s["queue"]["pending"] == 0, 120)
        await self.watch(4)
        say(f"the driver presents {CARD} again to stop, then unplugs")
        await self.actl("sim.swipe", id_tag=CARD, connector=1)
        await self.csms.wait_for("StopTransaction", timeout_s=30)
        await self.watch(3)
        await self.actl("sim.unplug", connector=1)
        await self.watch(3)
        for tx, record in sorted(self.csms.transactions.items()):
            if record.stop is not None:
                energy_wh = record.stop["meterStop"] - record.start["meterStart"]
                say(f"transaction {tx}: {energy_wh} Wh delivered; "
                    f"{len(record.meter_values)} MeterValues received; violations: {len(self.csms.violations)}")
        say("the demo session is over; the charger keeps running. Ctrl-C stops everything.")
        while True:
            await self.watch(30, every_s=10)

    async def run(self) -> int:
        DEMO_DIR.mkdir(exist_ok=True)
        # The story starts with an empty car park: forget the EV, faults and link state an
        # interrupted earlier demo left in the simulated hardware. The charger's own store is
        # kept, as a real charger's is (an unfinished transaction is stopped as PowerLoss).
        from hal.sim.board import STATE_FILE_NAME

        (self.settings.storage.state_dir / STATE_FILE_NAME).unlink(missing_ok=True)
        try:
            self.ntp.start()
        except OSError as exc:
            print(f"cannot start the NTP responder on {self.settings.ntp.servers[0]}: {exc}", file=sys.stderr)
            return 1
        try:
            await self.csms.start(port=self.port)
        except OSError as exc:
            print(f"cannot start the central system on port {self.port}: {exc}", file=sys.stderr)
            return 1
        say(f"central system listening on {self.csms.url} (CA {self.csms.ca_file})")
        log_path = DEMO_DIR / "daemon.log"
        say(f"starting the daemon: chargepoint run --config {CONFIG.relative_to(REPO)} (log: {log_path})")
        with log_path.open("ab") as log:
            self.daemon = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [sys.executable, "-m", "chargepoint", "run", "--config", str(CONFIG)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            await self.scenario()
        except (asyncio.CancelledError, KeyboardInterrupt):
            pass
        except TimeoutError as exc:
            say(f"the demo stalled ({exc}); see {log_path}")
            return 1
        finally:
            await self.shutdown()
        return 0

    async def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        say("stopping ...")
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.daemon.wait, 20)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
        await self.csms.stop()
        self.ntp.close()
        say("stopped cleanly")


def main() -> int:
    demo = Demo()
    loop = asyncio.new_event_loop()
    task = loop.create_task(demo.run())
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        loop.run_until_complete(demo.shutdown())
        return 0
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
