"""Smart charging figures (issue 5):

1. the composite schedule for 24 h over 10 installed profiles x 48 periods each
   (GetCompositeSchedule's work), with the per-second brute force next to it for scale;
2. the time from SetChargingProfile received (the handler entered) to the simulated
   pilot offering the new current, in the real app against the bundled central system;
3. the manager's work for one SetChargingProfile (the `make bench` payload) against a real
   SQLite store: the profile re-sent unchanged (already stored: no write) and changed each
   time (one durable commit before Accepted).
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from chargepoint.smartcharging.composite import composite_schedule, limit_at
from chargepoint.smartcharging.model import ChargingProfile, TxInfo, parse_profile

START = dt.datetime(2026, 11, 24, 0, 0, tzinfo=dt.UTC)
PURPOSES = ["TxDefaultProfile"] * 6 + ["ChargePointMaxProfile"] * 2 + ["TxProfile"] * 2


def ten_profiles() -> list[ChargingProfile]:
    profiles = []
    for i, purpose in enumerate(PURPOSES):
        kind = "Recurring" if i % 3 == 0 else "Absolute"
        schedule: dict[str, Any] = {
            "chargingRateUnit": "A" if i % 2 == 0 else "W",
            "startSchedule": (START + dt.timedelta(minutes=7 * i)).isoformat(),
            "duration": 86400,
            "chargingSchedulePeriod": [{"startPeriod": p * 1800, "limit": float(6 + (p * 7 + i) % 26)
                                        if i % 2 == 0 else float(4000 + ((p * 7 + i) % 18) * 1000)}
                                       for p in range(48)],
        }
        payload: dict[str, Any] = {"chargingProfileId": i + 1, "stackLevel": i % 5, "chargingProfilePurpose": purpose,
                                   "chargingProfileKind": kind, "chargingSchedule": schedule}
        if kind == "Recurring":
            payload["recurrencyKind"] = "Daily"
        if purpose == "TxProfile":
            payload["transactionId"] = 42
        profiles.append(parse_profile(payload, connector_id=0 if purpose == "ChargePointMaxProfile" else 1))
    return profiles


def composite_ms(rounds: int = 200) -> tuple[float, float, int]:
    profiles = ten_profiles()
    tx = TxInfo(42, START + dt.timedelta(hours=1))
    samples = []
    result = None
    for _ in range(rounds):
        t0 = time.perf_counter()
        result = composite_schedule(profiles, connector_id=1, start=START, duration_s=86400, rate_unit="A",
                                    transaction=tx, connector_phases=3)
        samples.append((time.perf_counter() - t0) * 1000)
    periods = len(result.to_conf()["chargingSchedule"]["chargingSchedulePeriod"]) if result else 0
    t0 = time.perf_counter()
    for second in range(0, 86400, 60):   # brute force, one minute resolution (1/60 of the work)
        limit_at(profiles, START + dt.timedelta(seconds=second), connector_id=1, transaction=tx)
    brute_ms = (time.perf_counter() - t0) * 1000 * 60
    return statistics.median(samples), brute_ms, periods


async def pilot_latency_ms(changes: int = 30) -> list[float]:
    """SetChargingProfile handler entered -> simulated pilot offering the new limit."""
    from tests.support.harness import CP_ID, charger_env, eventually, plug_and_charge

    with tempfile.TemporaryDirectory(prefix="bench-sc-") as tmp:
        async with charger_env(Path(tmp), MeterValueSampleInterval=0) as env:
            env.doc["authorization"] = {"free_vend_id_tag": "FREEVEND"}
            async with env.app() as app:
                await eventually(lambda: app.online, timeout_s=20)
                tx_id = await plug_and_charge(env)
                pilot: Any = app.board.connector(1).pilot
                offers: list[tuple[float, float]] = []   # (perf_counter, current_a) as the pilot is driven
                drive = pilot.offer_current

                def recording_offer(current_a: float) -> None:
                    drive(current_a)
                    offers.append((time.perf_counter(), current_a))

                pilot.offer_current = recording_offer
                service = app.smart_charging
                entered: list[float] = []
                original = service.on_set_charging_profile

                async def timed(payload: dict[str, Any]) -> Any:
                    entered.append(time.perf_counter())
                    return await original(payload)

                app.on("SetChargingProfile", timed)
                latencies = []
                limits_a = (10.0, 16.0, 8.0, 12.0, 6.0)
                for i in range(changes):
                    # Raises and lowerings alike: the harness sets pilot_raise_min_interval_s = 0
                    # (in the field raises are rate-limited on purpose; lowerings never are).
                    limit = limits_a[i % len(limits_a)]
                    profile = {"connectorId": 1, "csChargingProfiles": {
                        "chargingProfileId": 500, "stackLevel": 1, "chargingProfilePurpose": "TxProfile",
                        "chargingProfileKind": "Relative", "transactionId": tx_id,
                        "chargingSchedule": {"chargingRateUnit": "A",
                                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}}}
                    await env.csms.call(CP_ID, "SetChargingProfile", profile)
                    changed = await eventually(
                        lambda limit=limit: next((t for t, a in offers if t >= entered[-1] and abs(a - limit) < 0.05),
                                                 None),
                        timeout_s=10, interval_s=0.001)
                    latencies.append((changed - entered[-1]) * 1000)
                return latencies


def set_profile_us(calls: int = 2000) -> tuple[float, float]:
    """Median µs per SmartChargingManager.set_profile: (re-sent unchanged, changed every call)."""
    from bench.__main__ import SET_PROFILE
    from chargepoint.smartcharging.manager import SmartChargingManager
    from chargepoint.store import Store

    unchanged = SET_PROFILE["csChargingProfiles"]
    changed = [copy.deepcopy(unchanged) for _ in range(2)]
    for i, doc in enumerate(changed):
        doc["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] = 10.0 + i
    with tempfile.TemporaryDirectory(prefix="bench-sc-") as tmp:
        store = Store(tmp)
        try:
            manager = SmartChargingManager(
                connector_ids=(1,), repository=store.profiles, max_stack_level=lambda: 8,
                allowed_rate_units=lambda: ("Current", "Power"), max_periods=lambda: 24,
                max_profiles_installed=lambda: 16, clock=lambda: START, active_transaction=lambda _c: None)
            figures = []
            for payloads in ([unchanged], changed):
                samples = []
                for i in range(calls):
                    t0 = time.perf_counter()
                    status = manager.set_profile(1, payloads[i % len(payloads)])
                    samples.append((time.perf_counter() - t0) * 1e6)
                    assert status == "Accepted", status
                figures.append(statistics.median(samples))
        finally:
            store.close()
    return figures[0], figures[1]


def print_tables() -> None:
    median_ms, brute_ms, periods = composite_ms()
    print()
    print("Smart charging: composite schedule, 24 h, 10 profiles x 48 periods (connector 1, with a TxProfile)")
    print(f"{'engine':<28} {'ms per schedule':>16} {'periods out':>12}")
    print("-" * 58)
    print(f"{'composite_schedule (merged)':<28} {median_ms:>16.2f} {periods:>12d}")
    print(f"{'per-second brute force':<28} {brute_ms:>16.0f} {'-':>12}")
    latencies = asyncio.run(pilot_latency_ms())
    print()
    print(f"SetChargingProfile received -> simulated pilot changed, {len(latencies)} changes")
    print(f"p50 {statistics.median(latencies):.2f} ms   max {max(latencies):.2f} ms")
    same_us, changed_us = set_profile_us()
    print()
    print("SetChargingProfile in the manager (8 periods, real SQLite store), median per call")
    print(f"re-sent unchanged {same_us:.1f} µs   changed every call (durable write) {changed_us:.1f} µs")


if __name__ == "__main__":
    print_tables()
