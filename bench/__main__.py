"""`make bench`: the charger's figures, measured side by side in one run on this machine.

Peers, each a separate process over wss on loopback against the same raw
websockets server (so the server's cost is the same for all):
  - raw     : a bare websockets client answering each CALL with a canned result
              (the floor: no OCPP layer at all)
  - naive   : the obvious client written with the `ocpp` library (field-notes.md §2)
  - daemon  : this project's daemon (`python -m chargepoint run`), validating every
              inbound message

Figures: central-system -> charger round trip (GetConfiguration and
SetChargingProfile) p50/p99 over N calls, cold start to BootNotification, idle
RSS, idle CPU. Ratios are to the raw floor measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from chargepoint.devtools.ntp_server import NtpServer
from chargepoint.devtools.pki import ensure_pki

REPO = Path(__file__).resolve().parents[1]
CP_ID = "CP-BENCH"
PASSWORD = "0123456789abcdef0123"

SET_PROFILE = {
    "connectorId": 1,
    "csChargingProfiles": {
        "chargingProfileId": 7, "stackLevel": 1, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {"chargingRateUnit": "A", "startSchedule": "2026-01-01T00:00:00Z",
                             "chargingSchedulePeriod": [{"startPeriod": i * 1800, "limit": 16.0 - (i % 4)}
                                                        for i in range(8)]},
    },
}


class BenchServer:
    """A minimal central system: answers the charger's CALLs and times its own CALLs."""

    def __init__(self) -> None:
        self.ws: ServerConnection | None = None
        self.connected = asyncio.Event()
        self.boot_at: float | None = None
        self.boot_seen = asyncio.Event()
        self._pending: dict[str, asyncio.Future[Any]] = {}

    async def handler(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.connected.set()
        try:
            await self._serve(ws)
        except ConnectionClosed:
            pass  # the peer process was terminated at the end of its measurement
        self.connected.clear()

    async def _serve(self, ws: ServerConnection) -> None:
        async for text in ws:
            msg = json.loads(text)
            if msg[0] == 2:
                action = msg[2]
                now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                if action == "BootNotification":
                    if self.boot_at is None:
                        self.boot_at = time.monotonic()
                    self.boot_seen.set()
                    result: dict[str, Any] = {"status": "Accepted", "currentTime": now, "interval": 3600}
                elif action == "Heartbeat":
                    result = {"currentTime": now}
                elif action in ("Authorize", "StartTransaction"):
                    result = {"idTagInfo": {"status": "Accepted"}, "transactionId": 1}
                else:
                    result = {}
                await ws.send(json.dumps([3, msg[1], result]))
            elif msg[0] in (3, 4):
                fut = self._pending.pop(msg[1], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        assert self.ws is not None
        message_id = uuid.uuid4().hex
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = fut
        await self.ws.send(json.dumps([2, message_id, action, payload]))
        return await fut


def _write_config(tmp: Path, url: str, ca_file: Path, ntp_address: str) -> Path:
    config = tmp / "bench.toml"
    config.write_text(f"""
[ocpp]
url = "{url}"
charge_point_id = "{CP_ID}"
password = "{PASSWORD}"
[ocpp.config]
HeartbeatInterval = 3600
WebSocketPingInterval = 0
MeterValueSampleInterval = 0
[tls]
ca_file = "{ca_file}"
[ntp]
servers = ["{ntp_address}"]
set_clock = false
[storage]
state_dir = "{tmp / 'state'}"
[control]
socket = "{tmp / 'control.sock'}"
[hal]
backend = "sim"
[logging]
level = "WARNING"
""")
    return config


def _peer_command(kind: str, url: str, ca_file: Path, config: Path) -> list[str]:
    if kind == "daemon":
        return [sys.executable, "-m", "chargepoint", "run", "--config", str(config)]
    return [sys.executable, "-m", f"bench.peer_{kind}", url, str(ca_file), CP_ID, PASSWORD]


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


ACTIONS: dict[str, dict[str, Any]] = {
    "GetConfiguration": {"key": ["HeartbeatInterval"]},
    "SetChargingProfile": SET_PROFILE,
}


async def measure(kind: str, calls: int, idle_s: float, tmp: Path, actions: list[str]) -> dict[str, Any]:
    import ssl

    pki = ensure_pki(tmp / "pki")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    server = BenchServer()
    ntp = NtpServer().start()
    async with serve(server.handler, "127.0.0.1", 0, ssl=ctx, subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                     ping_interval=None, compression=None) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        url = f"wss://127.0.0.1:{port}/ocpp"
        config = _write_config(tmp, url, pki.ca_cert, ntp.address)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        started = time.monotonic()
        log = (tmp / "peer.log").open("wb")
        # Popen returns at once (fork/exec); the peer's start-up is what we time.
        proc = subprocess.Popen(_peer_command(kind, url, pki.ca_cert, config), cwd=REPO, env=env,  # noqa: ASYNC220
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            await asyncio.wait_for(server.boot_seen.wait(), 30)
            cold_start_s = (server.boot_at or time.monotonic()) - started
            await asyncio.sleep(1.0)  # let start-up traffic (StatusNotifications) settle
            figures: dict[str, Any] = {"peer": kind, "cold_start_s": cold_start_s}
            for action in actions:
                payload = ACTIONS[action]
                for _ in range(min(200, calls // 10)):  # warm-up
                    await server.call(action, payload)
                samples = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    reply = await server.call(action, payload)
                    samples.append((time.perf_counter() - t0) * 1000)
                    if reply[0] != 3:
                        raise RuntimeError(f"{kind}: {action} answered {reply}")
                figures[action] = {"p50_ms": statistics.median(samples), "p99_ms": _pct(samples, 0.99),
                                   "calls_per_s": 1000 / statistics.mean(samples)}
            await asyncio.sleep(2.0)
            figures["rss_mb"] = _rss_kb(proc.pid) / 1024
            ticks0, t0 = _cpu_ticks(proc.pid), time.monotonic()
            await asyncio.sleep(idle_s)
            ticks1, t1 = _cpu_ticks(proc.pid), time.monotonic()
            figures["idle_cpu_pct"] = 100 * (ticks1 - ticks0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)
            return figures
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            ntp.close()
            log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds to measure idle CPU")
    parser.add_argument("--peers", default="raw,naive,daemon")
    parser.add_argument("--no-smart", action="store_true", help="skip the smart-charging figures")
    parser.add_argument("--actions", default="GetConfiguration,SetChargingProfile")
    parser.add_argument("--no-queue", action="store_true", help="skip the durable queue figures (bench/bench_queue.py)")
    args = parser.parse_args()
    results = []
    actions = args.actions.split(",")
    for kind in args.peers.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as tmp:
            print(f"measuring {kind} ...", file=sys.stderr, flush=True)
            results.append(asyncio.run(measure(kind, args.calls, args.idle, Path(tmp), actions)))
    floor = next((r for r in results if r["peer"] == "raw"), None)
    print()
    print(f"Central system -> charger round trip, {args.calls} sequential calls each, wss on loopback")
    header = f"{'peer':<8} {'action':<19} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>8} {'p50 x raw':>10}"
    print(header)
    print("-" * len(header))
    for r in results:
        for action in actions:
            f = r[action]
            ratio = f["p50_ms"] / floor[action]["p50_ms"] if floor else float("nan")
            print(f"{r['peer']:<8} {action:<19} {f['p50_ms']:>8.3f} {f['p99_ms']:>8.3f} {f['calls_per_s']:>8.0f} "
                  f"{ratio:>9.2f}x")
    print()
    header = f"{'peer':<8} {'cold start to BootNotification s':>33} {'idle RSS MB':>12} {'idle CPU %':>11}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['peer']:<8} {r['cold_start_s']:>33.3f} {r['rss_mb']:>12.1f} {r['idle_cpu_pct']:>11.3f}")
    if not args.no_queue:
        from bench.bench_queue import print_tables  # durable queue: cost per sample, drain rate (p3a)

        print_tables()
    if not args.no_smart:
        from bench.bench_smartcharging import print_tables as smart_tables

        smart_tables()
    if "--json" in sys.argv:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
