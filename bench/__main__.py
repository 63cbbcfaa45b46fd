"""`make bench`: the charger's figures, measured side by side in one run on this machine.

Peers, each a separate process over wss on loopback, each against its own instance of
the same minimal websockets server (so the server's cost is the same for all):
  - raw     : a bare websockets client answering each CALL with a canned result
              (the floor: no OCPP layer at all)
  - naive   : the obvious client written with the `ocpp` library (field-notes.md §2)
  - daemon  : this project's daemon (`python -m chargepoint run`), validating every
              inbound message

Figures: central-system -> charger round trip p50/p99 over N calls of GetConfiguration,
SetChargingProfile re-sent unchanged, and SetChargingProfile with a new limit each call
(which the daemon commits to SQLite with fsync before it answers Accepted); cold start to
BootNotification; idle RSS; idle CPU. All peers stay connected and the calls go to them in
interleaved blocks, so load from elsewhere on a shared machine hits them alike; ratios are
to the raw floor measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

SET_PROFILE: dict[str, Any] = {
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


def _private_kb(pid: int) -> int:
    """USS: pages only this process holds (what starting it costs a board's RAM; the shared
    libraries' pages in RSS are shared with every other process that maps them)."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _set_profile_changed(i: int) -> dict[str, Any]:
    """SET_PROFILE with its first limit different on every call: the charger must commit it
    to the store (fsync) before answering Accepted, as it would a central system's new limit."""
    payload = json.loads(json.dumps(SET_PROFILE))
    payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] = 6.0 + (i % 100) / 10
    return payload


# name -> (OCPP action, payload of call i)
ACTIONS: dict[str, tuple[str, Any]] = {
    "GetConfiguration": ("GetConfiguration", lambda i: {"key": ["HeartbeatInterval"]}),
    # The same profile re-sent (what a platform does when it refreshes its limits).
    "SetChargingProfile": ("SetChargingProfile", lambda i: SET_PROFILE),
    # A new limit every call: includes the durable store write (fsync) before Accepted.
    "SetChargingProfile+write": ("SetChargingProfile", _set_profile_changed),
}

BLOCK_CALLS = 100  # calls to one peer before moving to the next (interleaved measurement)


class Peer:
    """One peer process connected to its own BenchServer."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind, self.tmp = kind, tmp
        self.server = BenchServer()
        self.proc: subprocess.Popen[bytes] | None = None
        self.cold_start_s = float("nan")
        self.samples: dict[str, list[float]] = {}

    async def start(self, ctx: Any, pki: Any, ntp: NtpServer, stack: contextlib.AsyncExitStack) -> None:
        ws_server = await stack.enter_async_context(
            serve(self.server.handler, "127.0.0.1", 0, ssl=ctx, subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                  ping_interval=None, compression=None))
        port = ws_server.sockets[0].getsockname()[1]
        url = f"wss://127.0.0.1:{port}/ocpp"
        config = _write_config(self.tmp, url, pki.ca_cert, ntp.address)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        log = stack.enter_context((self.tmp / "peer.log").open("wb"))
        started = time.monotonic()
        # Popen returns at once (fork/exec); the peer's start-up is what we time.
        self.proc = subprocess.Popen(_peer_command(self.kind, url, pki.ca_cert, config),  # noqa: ASYNC220
                                     cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        await asyncio.wait_for(self.server.boot_seen.wait(), 30)
        self.cold_start_s = (self.server.boot_at or time.monotonic()) - started

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    async def block(self, name: str, first_call: int, calls: int) -> None:
        action, payload_of = ACTIONS[name]
        samples = self.samples.setdefault(name, [])
        for i in range(first_call, first_call + calls):
            payload = payload_of(i)
            t0 = time.perf_counter()
            reply = await self.server.call(action, payload)
            samples.append((time.perf_counter() - t0) * 1000)
            if reply[0] != 3 or (action == "SetChargingProfile" and reply[2].get("status") != "Accepted"):
                raise RuntimeError(f"{self.kind}: {action} answered {reply}")


async def measure_all(kinds: list[str], calls: int, idle_s: float, tmp: Path,
                      names: list[str]) -> list[dict[str, Any]]:
    """Every peer connected at once; calls go to them in interleaved blocks of BLOCK_CALLS
    (order alternating each round), so a burst of load from elsewhere on this shared machine
    hits every peer alike and the ratios to the raw floor stay fair."""
    import ssl

    pki = ensure_pki(tmp / "pki")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ntp = NtpServer().start()
    peers = []
    for kind in kinds:
        (tmp / kind).mkdir()
        peers.append(Peer(kind, tmp / kind))
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(ntp.close)
        for peer in peers:
            stack.callback(peer.stop)
        for peer in peers:  # one at a time: cold start is timed on a machine the others leave idle
            print(f"starting {peer.kind} ...", file=sys.stderr, flush=True)
            await peer.start(ctx, pki, ntp, stack)
            await asyncio.sleep(1.0)  # let start-up traffic (StatusNotifications) settle
        for name in names:
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            warm_up = min(200, calls // 10)
            for peer in peers:
                await peer.block(name, 0, warm_up)
                peer.samples[name].clear()
            done, round_no = 0, 0
            while done < calls:
                block = min(BLOCK_CALLS, calls - done)
                for peer in (peers if round_no % 2 == 0 else peers[::-1]):
                    await peer.block(name, warm_up + done, block)
                done, round_no = done + block, round_no + 1
        await asyncio.sleep(2.0)
        results = []
        for peer in peers:
            assert peer.proc is not None
            figures: dict[str, Any] = {"peer": peer.kind, "cold_start_s": peer.cold_start_s,
                                       "rss_mb": _rss_kb(peer.proc.pid) / 1024,
                                       "private_mb": _private_kb(peer.proc.pid) / 1024}
            for name in names:
                s = peer.samples[name]
                figures[name] = {"p50_ms": statistics.median(s), "p99_ms": _pct(s, 0.99),
                                 "calls_per_s": 1000 / statistics.mean(s)}
            results.append(figures)
        ticks0 = {r["peer"]: _cpu_ticks(p.proc.pid) for r, p in zip(results, peers, strict=True)  # type: ignore[union-attr]
                  }
        t0 = time.monotonic()
        await asyncio.sleep(idle_s)
        elapsed_s = time.monotonic() - t0
        for r, p in zip(results, peers, strict=True):
            ticks = _cpu_ticks(p.proc.pid) - ticks0[r["peer"]]  # type: ignore[union-attr]
            r["idle_cpu_pct"] = 100 * ticks / os.sysconf("SC_CLK_TCK") / elapsed_s
        return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds to measure idle CPU")
    parser.add_argument("--peers", default="raw,naive,daemon")
    parser.add_argument("--no-smart", action="store_true", help="skip the smart-charging figures")
    parser.add_argument("--actions", default=",".join(ACTIONS), help=f"of {', '.join(ACTIONS)}")
    parser.add_argument("--no-queue", action="store_true", help="skip the durable queue figures (bench/bench_queue.py)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = args.actions.split(",")
    unknown = [n for n in names if n not in ACTIONS]
    if unknown:
        parser.error(f"unknown action(s): {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        results = asyncio.run(measure_all(args.peers.split(","), args.calls, args.idle, Path(tmp), names))
    floor = next((r for r in results if r["peer"] == "raw"), None)
    print()
    print(f"Central system -> charger round trip, {args.calls} sequential calls per peer, wss on loopback,")
    print(f"peers measured side by side in interleaved blocks of {BLOCK_CALLS} calls")
    header = f"{'peer':<8} {'action':<25} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>8} {'p50 x raw':>10}"
    print(header)
    print("-" * len(header))
    for name in names:
        for r in results:
            f = r[name]
            ratio = f["p50_ms"] / floor[name]["p50_ms"] if floor else float("nan")
            print(f"{r['peer']:<8} {name:<25} {f['p50_ms']:>8.3f} {f['p99_ms']:>8.3f} {f['calls_per_s']:>8.0f} "
                  f"{ratio:>9.2f}x")
    print()
    header = (f"{'peer':<8} {'cold start to BootNotification s':>33} {'idle RSS MB':>12} {'of it private MB':>17}"
              f" {'idle CPU %':>11}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['peer']:<8} {r['cold_start_s']:>33.3f} {r['rss_mb']:>12.1f} {r['private_mb']:>17.1f}"
              f" {r['idle_cpu_pct']:>11.3f}")
    if not args.no_queue:
        from bench.bench_queue import print_tables  # durable queue: cost per sample, drain rate (p3a)

        print_tables()
    if not args.no_smart:
        from bench.bench_smartcharging import print_tables as smart_tables

        smart_tables()
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
