"""The durable transaction-message queue (OCPP 1.6 §3.7): what a sample costs, how fast an outage drains.

(a) Store cost per sample. What the metering service does for every periodic sample of
    a transaction: enqueue the MeterValues payload and persist the transaction's last meter
    reading (the meterStop of a PowerLoss stop) in ONE store transaction: one COMMIT, one
    fsync of the WAL (synchronous=FULL). Measured on a real SQLite file in a temporary
    state directory, next to the enqueue alone and the same two writes as two commits.
(b) Drain on reconnect. N MeterValues of a confirmed transaction are put straight into
    the store (as an outage leaves them), then the real daemon (`python -m chargepoint
    run`) is started against the bundled central system over wss on loopback (strict:
    every message validated and booked). Messages per second from the first MeterValues
    the central system receives to the last; the daemon's recovery queues a PowerLoss
    StopTransaction behind them, which marks the end. One message in flight at a time
    (§3.7), so the rate is bound by round trips, not by the store.

    python -m bench.bench_queue [--samples 1000] [--drain 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from chargepoint.clock import EventTime, kernel_boot_id
from chargepoint.csms.server import TransactionRecord as CsmsTransaction
from chargepoint.services.metering import CTX_PERIODIC, Sample, meter_value, sampled_values
from chargepoint.store.db import Store
from chargepoint.store.queue import time_ref

MEASURANDS = ("Energy.Active.Import.Register", "Power.Active.Import")   # MeterValuesSampledData default
TRANSACTION_ID = 4711
ID_TAG = "BENCH"
START_WH = 1000
STEP_WH = 31            # ~11 kW for 10 s
SAMPLE_INTERVAL_S = 10.0


def _payload(i: int, t: EventTime) -> dict[str, Any]:
    """A periodic MeterValues payload as the metering service queues it (transactionId filled at send)."""
    sample = Sample(energy_wh=START_WH + STEP_WH * i, power_w=11040.0)
    values = sampled_values(MEASURANDS, sample, CTX_PERIODIC)
    return {"connectorId": 1, "meterValue": [meter_value(time_ref(t), values)]}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- (a) store cost


class _Variant:
    """One way of writing a sample, on its own database file."""

    def __init__(self, state_dir: Path, kind: str) -> None:
        self.store = Store(state_dir)
        self.kind = kind
        self.boot_id = kernel_boot_id() or "bench"
        t0 = EventTime(self.boot_id, time.monotonic(), time.time())
        self.local_id = self.store.transactions.begin(connector_id=1, id_tag=ID_TAG, start_meter_wh=START_WH,
                                                      start_time=t0)
        self.store.transactions.set_remote_id(self.local_id, TRANSACTION_ID, "Accepted")
        self.durations_ms: list[float] = []

    def _enqueue(self, i: int, t: EventTime) -> None:
        self.store.queue.enqueue("MeterValues", _payload(i, t), local_tx_id=self.local_id, kind="meter_periodic",
                                 event_time=t)

    def _last_meter(self, i: int, t: EventTime) -> None:
        self.store.transactions.update_last_meter(self.local_id, START_WH + STEP_WH * i, t)

    def sample(self, i: int) -> None:
        t = EventTime(self.boot_id, time.monotonic(), time.time())
        started = time.perf_counter()
        if self.kind == "enqueue":
            self._enqueue(i, t)
        elif self.kind == "one":
            with self.store.transaction():     # what services/metering.py does
                self._enqueue(i, t)
                self._last_meter(i, t)
        else:
            self._enqueue(i, t)
            self._last_meter(i, t)             # its own autocommit: a second fsync
        self.durations_ms.append((time.perf_counter() - started) * 1000)

    def figures(self) -> dict[str, Any]:
        store = self.store
        total_b, count = store.query("SELECT SUM(LENGTH(payload)), COUNT(*) FROM queue")[0]
        store.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        d = self.durations_ms
        return {"mean_ms": statistics.mean(d), "p50_ms": statistics.median(d), "p99_ms": _pct(d, 0.99),
                "payload_b": int(total_b) / int(count) if count else 0.0,
                "disk_b_per_sample": store.path.stat().st_size / max(1, count)}


def measure_store(samples: int) -> dict[str, dict[str, Any]]:
    """The variants take turns sample by sample (rotating who goes first), so a noisy
    neighbour on the machine weighs on all of them alike."""
    kinds = ("enqueue", "one", "two")
    with tempfile.TemporaryDirectory(prefix="bench-queue-store-") as tmp:
        variants = [_Variant(Path(tmp) / kind, kind) for kind in kinds]
        try:
            for i in range(samples):
                for k in range(len(variants)):
                    variants[(i + k) % len(variants)].sample(i)
            return {v.kind: v.figures() for v in variants}
        finally:
            for v in variants:
                v.store.close()


# --------------------------------------------------------------------------- (b) drain


def _fill(state_dir: Path, n: int) -> None:
    """An outage's worth of samples for a transaction whose Start was confirmed, oldest first."""
    store = Store(state_dir)
    try:
        boot_id = kernel_boot_id() or "bench"
        now_s, mono_s = time.time(), time.monotonic()
        first_s = now_s - (n + 1) * SAMPLE_INTERVAL_S
        with store.transaction():
            t0 = EventTime(boot_id, mono_s - (now_s - first_s), first_s)
            local_id = store.transactions.begin(connector_id=1, id_tag=ID_TAG, start_meter_wh=START_WH,
                                                start_time=t0)
            store.transactions.set_remote_id(local_id, TRANSACTION_ID, "Accepted")
            for i in range(1, n + 1):
                wall_s = first_s + i * SAMPLE_INTERVAL_S
                t = EventTime(boot_id, mono_s - (now_s - wall_s), wall_s)
                store.queue.enqueue("MeterValues", _payload(i, t), local_tx_id=local_id, kind="meter_periodic",
                                    event_time=t)
            store.transactions.update_last_meter(local_id, START_WH + STEP_WH * n, t)
    finally:
        store.close()


async def measure_drain(n: int, tmp: Path) -> dict[str, Any]:
    # The test harness builds the same setup the end-to-end tests use (CSMS, NTP, TOML).
    from tests.support.harness import CP_ID, charger_env

    async with charger_env(tmp, HeartbeatInterval=3600, MeterValueSampleInterval=0) as env:
        env.doc["logging"] = {"level": "WARNING"}
        csms = env.csms
        _fill(env.state_dir, n)
        start_payload = {"connectorId": 1, "idTag": ID_TAG, "meterStart": START_WH, "timestamp": "2026-01-01T00:00:00Z"}
        # The central system confirmed this transaction before the outage.
        csms.transactions[TRANSACTION_ID] = CsmsTransaction(TRANSACTION_ID, CP_ID, 1, ID_TAG, start_payload)
        csms.next_transaction_id = TRANSACTION_ID + 1
        launched = time.monotonic()
        with env.daemon() as proc:
            try:
                boot = await csms.wait_for("BootNotification", timeout_s=60)
                stop = await csms.wait_for("StopTransaction", timeout_s=max(120.0, n / 5))
            except TimeoutError as exc:
                raise RuntimeError(f"drain did not finish: {exc}\n{proc.log_text()[-2000:]}") from exc
        meter_values = [r for r in csms.received_of("MeterValues") if r.payload.get("transactionId") == TRANSACTION_ID]
        if len(meter_values) != n or csms.violations:
            raise RuntimeError(f"drain incomplete or wrong: {len(meter_values)} of {n} MeterValues, "
                               f"violations {[str(v) for v in csms.violations[:3]]}")
        first, last = meter_values[0].time_monotonic, meter_values[-1].time_monotonic
        return {"messages": n, "first_to_last_s": last - first, "msgs_per_s": (n - 1) / max(last - first, 1e-9),
                "launch_to_boot_s": boot.time_monotonic - launched, "boot_to_stop_s": stop.time_monotonic
                - boot.time_monotonic}


# --------------------------------------------------------------------------- report


VARIANTS = {"enqueue": "enqueue only", "one": "enqueue + last meter, one commit (used)",
            "two": "enqueue + last meter, two commits"}


def print_tables(samples: int = 1000, drain: int = 2000) -> None:
    print("measuring the durable queue ...", file=sys.stderr, flush=True)
    store = measure_store(samples)
    with tempfile.TemporaryDirectory(prefix="bench-queue-drain-") as tmp:
        drained = asyncio.run(measure_drain(drain, Path(tmp)))
    print()
    print(f"Durable queue: store cost per MeterValues sample, {samples} samples, SQLite WAL synchronous=FULL")
    header = f"{'variant':<40} {'mean ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'samples/s':>10}"
    print(header)
    print("-" * len(header))
    for kind, label in VARIANTS.items():
        f = store[kind]
        print(f"{label:<40} {f['mean_ms']:>8.3f} {f['p50_ms']:>8.3f} {f['p99_ms']:>8.3f} {1000 / f['mean_ms']:>10.0f}")
    used = store["one"]
    print(f"payload {used['payload_b']:.0f} B/message; database on disk {used['disk_b_per_sample']:.0f} B/sample")
    print()
    print("Durable queue: drain on reconnect, daemon process -> bundled central system (wss loopback, one in flight)")
    header = f"{'messages':>8} {'first->last s':>14} {'msgs/s':>8} {'launch->boot s':>15} {'boot->all delivered s':>22}"
    print(header)
    print("-" * len(header))
    print(f"{drained['messages']:>8} {drained['first_to_last_s']:>14.2f} {drained['msgs_per_s']:>8.0f} "
          f"{drained['launch_to_boot_s']:>15.2f} {drained['boot_to_stop_s']:>22.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000, help="samples per store variant")
    parser.add_argument("--drain", type=int, default=2000, help="MeterValues queued before the daemon starts")
    args = parser.parse_args()
    print_tables(args.samples, args.drain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
