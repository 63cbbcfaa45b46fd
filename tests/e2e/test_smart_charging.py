"""Smart charging end to end: profiles from the central system reach the simulated control pilot.

The charger runs in-process against the bundled central system (wss, strict schemas) and
the simulated board; a transaction is started by free vend (plugging in) or by
RemoteStartTransaction. What is observed is what a rig sees: the pilot offer and duty
cycle in `status`, and the StatusNotifications the central system receives.
OCPP 1.6 §3.13 (smart charging), §5.5 ClearChargingProfile, §5.7 GetCompositeSchedule,
§5.11/§5.16.2 RemoteStartTransaction with a profile, §5.16 SetChargingProfile, errata 3.37.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chargepoint.app import ChargePointApp
from chargepoint.clock import Clock
from chargepoint.csms.server import CallErrorResponse
from chargepoint.ntp import sync_clock
from chargepoint.smartcharging.model import format_datetime
from tests.support.harness import CP_ID, ChargerEnv, charger_env, eventually, plug_and_charge

FREE_VEND = "FREEVEND"
CONNECTOR_MAX_A = 32.0
WAIT_S = 20.0

pytestmark = pytest.mark.asyncio


# --------------------------------------------------------------------------- helpers


def profile(pid: int, purpose: str, periods: list[tuple[int, float]], *, stack: int = 0, kind: str = "Absolute",
            start: datetime | None = None, unit: str = "A", duration: int | None = None) -> dict[str, Any]:
    """A csChargingProfiles object; Absolute profiles start at `start` (default: a day ago)."""
    schedule: dict[str, Any] = {"chargingRateUnit": unit,
                                "chargingSchedulePeriod": [{"startPeriod": s, "limit": lim} for s, lim in periods]}
    if kind == "Absolute":
        schedule["startSchedule"] = format_datetime(start or datetime.now(UTC) - timedelta(days=1))
    if duration is not None:
        schedule["duration"] = duration
    return {"chargingProfileId": pid, "stackLevel": stack, "chargingProfilePurpose": purpose,
            "chargingProfileKind": kind, "chargingSchedule": schedule}


async def set_profile(env: ChargerEnv, connector_id: int, cs_profile: dict[str, Any]) -> str:
    conf = await env.csms.call(CP_ID, "SetChargingProfile",
                               {"connectorId": connector_id, "csChargingProfiles": cs_profile})
    return str(conf["status"])


async def connector(env: ChargerEnv) -> dict[str, Any]:
    status = await env.astatus()
    entry: dict[str, Any] = status["connectors"][0]
    return entry


async def wait_offer(env: ChargerEnv, current_a: float, *, timeout_s: float = WAIT_S) -> dict[str, Any]:
    """Wait until the pilot offers `current_a` (0: no PWM); returns that status entry."""
    async def check() -> dict[str, Any] | None:
        entry = await connector(env)
        return entry if entry["offered_current_a"] == current_a else None

    entry: dict[str, Any] = await eventually(check, timeout_s=timeout_s, message=f"pilot offer {current_a} A")
    return entry


def duty_for(current_a: float) -> float:
    """IEC 61851-1 (field notes §4): 6-51 A -> duty = A / 0.6; no offer -> 100 % (no PWM)."""
    return 100.0 if current_a == 0 else round(current_a / 0.6, 1)


@contextlib.asynccontextmanager
async def running(env: ChargerEnv) -> AsyncIterator[ChargePointApp]:
    async with env.app() as app:
        await env.csms.wait_for("BootNotification", timeout_s=WAIT_S)
        await eventually(lambda: app.online, timeout_s=WAIT_S, message="registered")
        yield app


def free_vend(env: ChargerEnv) -> None:
    env.doc["authorization"] = {"free_vend_id_tag": FREE_VEND}





class OfferRecorder:
    """Polls the control socket and keeps the sequence of distinct pilot offers seen."""

    def __init__(self, env: ChargerEnv) -> None:
        self.env = env
        self.offers: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            offer = (await connector(self.env))["offered_current_a"]
            if not self.offers or self.offers[-1] != offer:
                self.offers.append(offer)
            await asyncio.sleep(0.05)

    async def __aenter__(self) -> OfferRecorder:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# --------------------------------------------------------------------------- tests


async def test_tx_profile_during_a_transaction_sets_the_pilot_offer_5_16_3(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        free_vend(env)
        async with running(env):
            transaction_id = await plug_and_charge(env)
            entry = await wait_offer(env, CONNECTOR_MAX_A)
            assert entry["limit"] == {"current_a": None, "source": None}

            tx_profile = profile(12, "TxProfile", [(0, 10.0)], kind="Relative")
            tx_profile["transactionId"] = transaction_id
            assert await set_profile(env, 1, tx_profile) == "Accepted"

            entry = await wait_offer(env, 10.0)
            assert entry["pilot_duty_percent"] == duty_for(10.0)
            assert entry["limit"] == {"current_a": 10.0, "source": "TxProfile #12"}
            assert entry["status"] == "Charging"

            # §7.12: a limit in W is total power: 5520 W / (230 V x 3 phases) = 8 A per phase.
            assert await set_profile(env, 1, profile(12, "TxProfile", [(0, 5520.0)], kind="Relative",
                                                     unit="W")) == "Accepted"
            entry = await wait_offer(env, 8.0)
            assert entry["pilot_duty_percent"] == duty_for(8.0)

            # A TxProfile for another transaction is refused (§5.16.3) and changes nothing.
            other = profile(13, "TxProfile", [(0, 6.0)], kind="Relative", stack=1)
            other["transactionId"] = transaction_id + 1000
            assert await set_profile(env, 1, other) == "Rejected"
            assert (await connector(env))["offered_current_a"] == 8.0
        env.csms.assert_no_violations()


async def test_schedule_periods_change_the_pilot_at_their_boundaries_and_0_a_pauses_then_resumes_3_13(
        tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        free_vend(env)
        async with running(env) as app:
            await plug_and_charge(env)
            await wait_offer(env, CONNECTOR_MAX_A)
            # Absolute, starting now on the charger's clock: 16 A, 8 A, pause, 10 A.
            start = app.clock.now().replace(microsecond=0)
            schedule = profile(3, "TxProfile", [(0, 16.0), (2, 8.0), (4, 0.0), (7, 10.0)], start=start)
            mark = len(env.csms.received)
            async with OfferRecorder(env) as recorder:
                assert await set_profile(env, 1, schedule) == "Accepted"
                entry = await wait_offer(env, 10.0)
                await eventually(lambda: recorder.offers[-1] == 10.0, timeout_s=WAIT_S, message="recorded 10 A")
            assert entry["pilot_duty_percent"] == duty_for(10.0)
            seen = recorder.offers
            assert 16.0 in seen, seen
            assert seen[seen.index(16.0):] == [16.0, 8.0, 0.0, 10.0]

            # The 0 A period paused the EV (no PWM: SuspendedEVSE), the next period resumed it.
            paused = await env.csms.wait_for(
                "StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "SuspendedEVSE",
                after_index=mark, timeout_s=WAIT_S)
            await env.csms.wait_for(
                "StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "Charging",
                after_index=paused.index + 1, timeout_s=WAIT_S)
        env.csms.assert_no_violations()


async def test_a_clock_sync_across_a_period_boundary_applies_the_new_period_at_once_3_13(tmp_path: Path) -> None:
    """The schedule is wall time: when NTP moves the charger's clock past a boundary, the new
    period applies at the sync (Clock listener), not at the next fallback tick."""
    import chargepoint.services.smart_charging as smart_charging

    async with charger_env(tmp_path) as env:
        free_vend(env)
        async with running(env) as app:
            await plug_and_charge(env)
            start = app.clock.now().replace(microsecond=0)
            hourly = profile(4, "TxProfile", [(0, 16.0), (3600, 8.0)], start=start)
            assert await set_profile(env, 1, hourly) == "Accepted"
            await wait_offer(env, 16.0)
            # The central system's NTP time is an hour and a minute ahead; resync now.
            env.ntp.offset_s = app.clock.offset_s + 3660.0
            assert await sync_clock(app.clock, env.settings().ntp) is not None
            # Well inside the fallback tick: only the sync's wake-up can have applied 8 A.
            await wait_offer(env, 8.0, timeout_s=smart_charging.TICK_S / 2)
        env.csms.assert_no_violations()


async def test_charge_point_max_profile_caps_a_tx_default_profile_and_clearing_lifts_it_3_13_3_5_5(
        tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        free_vend(env)
        async with running(env):
            assert await set_profile(env, 0, profile(1, "TxDefaultProfile", [(0, 20.0)])) == "Accepted"
            assert await set_profile(env, 0, profile(2, "ChargePointMaxProfile", [(0, 12.0)])) == "Accepted"
            await plug_and_charge(env)

            entry = await wait_offer(env, 12.0)
            assert entry["pilot_duty_percent"] == duty_for(12.0)
            assert entry["limit"] == {"current_a": 12.0, "source": "ChargePointMaxProfile #2"}

            # §5.5: a profile that is not there is Unknown; clearing the cap lifts it.
            assert (await env.csms.call(CP_ID, "ClearChargingProfile", {"id": 99}))["status"] == "Unknown"
            assert (await env.csms.call(CP_ID, "ClearChargingProfile", {"id": 2}))["status"] == "Accepted"
            entry = await wait_offer(env, 20.0)
            assert entry["limit"] == {"current_a": 20.0, "source": "TxDefaultProfile #1"}

            # Errata 3.25: no field clears everything; the connector maximum is offered again.
            assert (await env.csms.call(CP_ID, "ClearChargingProfile", {}))["status"] == "Accepted"
            entry = await wait_offer(env, CONNECTOR_MAX_A)
            assert entry["limit"] == {"current_a": None, "source": None}
        env.csms.assert_no_violations()


async def test_get_composite_schedule_for_connector_1_and_0_and_rejected_for_an_unknown_connector_5_7(
        tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        async with running(env) as app:
            start = app.clock.now().replace(microsecond=0) - timedelta(seconds=10)
            # 16 A until start+610 s, then 7.3 A; capped at 10 kW for the whole charge point.
            assert await set_profile(env, 1, profile(4, "TxDefaultProfile", [(0, 16.0), (610, 7.3)],
                                                     start=start)) == "Accepted"
            assert await set_profile(env, 0, profile(5, "ChargePointMaxProfile", [(0, 10000.0)],
                                                     unit="W")) == "Accepted"

            one = await env.csms.call(CP_ID, "GetCompositeSchedule", {"connectorId": 1, "duration": 3600})
            assert one["status"] == "Accepted" and one["connectorId"] == 1
            schedule_start = datetime.fromisoformat(one["scheduleStart"].replace("Z", "+00:00"))
            assert abs((schedule_start - app.clock.now()).total_seconds()) < 60
            schedule = one["chargingSchedule"]
            assert schedule["chargingRateUnit"] == "A"   # the connector's default unit
            assert schedule["duration"] == 3600
            limits = [p["limit"] for p in schedule["chargingSchedulePeriod"]]
            # 10 kW / (230 V x 3) = 14.49 A, reported rounded down to 0.1 (never above the limit).
            assert limits == [14.4, 7.3]
            assert schedule["chargingSchedulePeriod"][0]["startPeriod"] == 0

            watts = await env.csms.call(CP_ID, "GetCompositeSchedule",
                                        {"connectorId": 1, "duration": 3600, "chargingRateUnit": "W"})
            assert watts["chargingSchedule"]["chargingRateUnit"] == "W"
            assert [p["limit"] for p in watts["chargingSchedule"]["chargingSchedulePeriod"]] == [10000.0, 5037.0]

            # Errata 3.30: connector 0 reports what the charge point takes from the grid.
            grid = await env.csms.call(CP_ID, "GetCompositeSchedule",
                                       {"connectorId": 0, "duration": 600, "chargingRateUnit": "W"})
            assert grid["status"] == "Accepted" and grid["connectorId"] == 0
            assert [p["limit"] for p in grid["chargingSchedule"]["chargingSchedulePeriod"]] == [10000.0]

            unknown = await env.csms.call(CP_ID, "GetCompositeSchedule", {"connectorId": 9, "duration": 600})
            assert unknown == {"status": "Rejected"}

            # Errata 3.39: SetChargingProfile for a connector that does not exist is a CALLERROR.
            with pytest.raises(CallErrorResponse) as error:
                await set_profile(env, 9, profile(6, "TxDefaultProfile", [(0, 10.0)]))
            assert error.value.code == "PropertyConstraintViolation"

            # `chargepoint status --schedule HOURS` shows the same composite.
            shown = (await env.asim("status", schedule_hours=1))["result"]["connectors"][0]["schedule"]
            assert [p["limit"] for p in shown["chargingSchedulePeriod"]] == [14.4, 7.3]
        env.csms.assert_no_violations()


async def test_profiles_survive_a_restart_and_the_current_period_is_enforced_at_once_errata_3_37(
        tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        free_vend(env)
        # Started an hour ago: 20 A for 50 min, 7 A for an hour, then 20 A again.
        started = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        daily = profile(7, "TxDefaultProfile", [(0, 20.0), (3000, 7.0), (6600, 20.0)], start=started)
        async with running(env):
            assert await set_profile(env, 0, daily) == "Accepted"
            await eventually(lambda: app_limit(env, 7.0), timeout_s=WAIT_S, message="limit 7 A")

        sent = len(env.csms.received_of("SetChargingProfile"))
        async with env.app() as app:
            # Nothing re-sent: the limit comes from the store, before any EV asks for current.
            entry = await eventually(lambda: app_limit(env, 7.0), timeout_s=WAIT_S, message="limit 7 A at start")
            assert entry["limit"]["source"] == "TxDefaultProfile #7"
            await eventually(lambda: app.online, timeout_s=WAIT_S, message="registered again")
            await plug_and_charge(env)
            entry = await wait_offer(env, 7.0)
            assert entry["pilot_duty_percent"] == duty_for(7.0)
        assert len(env.csms.received_of("SetChargingProfile")) == sent
        env.csms.assert_no_violations()


async def app_limit(env: ChargerEnv, current_a: float) -> dict[str, Any] | None:
    entry = await connector(env)
    return entry if entry["limit"]["current_a"] == current_a else None


async def test_remote_start_with_a_tx_profile_applies_it_to_the_new_transaction_5_16_2_errata_3_42(
        tmp_path: Path) -> None:
    async with charger_env(tmp_path, AuthorizeRemoteTxRequests=False) as env:
        async with running(env):
            await env.asim("sim.plug", connector=1)
            tx_profile = profile(21, "TxProfile", [(0, 8.0)], kind="Relative")
            conf = await env.csms.call(CP_ID, "RemoteStartTransaction",
                                       {"connectorId": 1, "idTag": "TAG1", "chargingProfile": tx_profile})
            assert conf["status"] == "Accepted"
            start = await env.csms.wait_for("StartTransaction", timeout_s=WAIT_S)
            assert start.payload["idTag"] == "TAG1"

            entry = await wait_offer(env, 8.0)
            assert entry["pilot_duty_percent"] == duty_for(8.0)
            assert entry["limit"] == {"current_a": 8.0, "source": "TxProfile #21"}
        env.csms.assert_no_violations()


async def test_remote_start_with_a_profile_that_is_not_a_tx_profile_is_rejected_5_11(tmp_path: Path) -> None:
    async with charger_env(tmp_path, AuthorizeRemoteTxRequests=False) as env:
        async with running(env):
            await env.asim("sim.plug", connector=1)
            default = profile(22, "TxDefaultProfile", [(0, 8.0)], kind="Relative")
            conf = await env.csms.call(CP_ID, "RemoteStartTransaction",
                                       {"connectorId": 1, "idTag": "TAG1", "chargingProfile": default})
            assert conf["status"] == "Rejected"
            # Nothing was started and nothing installed.
            await asyncio.sleep(0.5)   # give a wrongly started transaction a chance to show (not a timing check)
            assert env.csms.received_of("StartTransaction") == []
            assert (await env.csms.call(CP_ID, "ClearChargingProfile", {"id": 22}))["status"] == "Unknown"
        env.csms.assert_no_violations()


async def test_failsafe_limit_applies_after_the_central_system_is_unreachable_and_lifts_when_back(
        tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        free_vend(env)
        env.doc["smart_charging"].update({"failsafe_current_a": 8.0, "failsafe_after_s": 1})
        async with running(env):
            await plug_and_charge(env)
            await wait_offer(env, CONNECTOR_MAX_A)

            await env.csms.stop()
            entry = await wait_offer(env, 8.0)
            assert entry["limit"] == {"current_a": 8.0, "source": "failsafe"}
            assert entry["pilot_duty_percent"] == duty_for(8.0)

            await env.csms.start()
            await env.csms.wait_connected(CP_ID, timeout_s=60)
            entry = await wait_offer(env, CONNECTOR_MAX_A, timeout_s=30)
            assert entry["limit"] == {"current_a": None, "source": None}
        env.csms.assert_no_violations()


async def test_tx_profile_is_removed_when_its_transaction_ends_7_10(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        free_vend(env)
        async with running(env):
            transaction_id = await plug_and_charge(env)
            assert await set_profile(env, 1, profile(31, "TxProfile", [(0, 9.0)], kind="Relative")) == "Accepted"
            await wait_offer(env, 9.0)

            await env.asim("sim.unplug", connector=1)
            await env.csms.wait_for("StopTransaction", lambda p: p["transactionId"] == transaction_id,
                                    timeout_s=WAIT_S)
            # §7.10: the TxProfile ceased with its transaction; the next one charges unlimited.
            await eventually(lambda: app_limit_none(env), timeout_s=WAIT_S, message="limit lifted")
            assert (await env.csms.call(CP_ID, "ClearChargingProfile", {"id": 31}))["status"] == "Unknown"
            mark = len(env.csms.received)
            await env.asim("sim.plug", connector=1)
            await env.csms.wait_for("StartTransaction", after_index=mark, timeout_s=WAIT_S)
            await wait_offer(env, CONNECTOR_MAX_A)
        env.csms.assert_no_violations()


async def app_limit_none(env: ChargerEnv) -> bool:
    return (await connector(env))["limit"]["current_a"] is None


async def test_profiles_breaking_the_rules_are_rejected_3_13_1_5_16_4(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        async with running(env):
            status = await set_profile(env, 1, profile(41, "TxProfile", [(0, 9.0)], kind="Relative"))
            assert status == "Rejected"
            # §3.13.1: TxProfile only at connectorId > 0; §3.13.5: stackLevel within ChargeProfileMaxStackLevel.
            assert await set_profile(env, 0, profile(42, "TxProfile", [(0, 9.0)], kind="Relative")) == "Rejected"
            assert await set_profile(env, 0, profile(43, "TxDefaultProfile", [(0, 9.0)], stack=11)) == "Rejected"
            assert await set_profile(env, 0, profile(44, "TxDefaultProfile", [(0, 9.0)], stack=10)) == "Accepted"
        env.csms.assert_no_violations()


async def test_unsynced_clock_uses_a_plausible_system_clock_and_an_implausible_one_gets_the_failsafe_3_13_6(
        tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        env.doc["smart_charging"].update({"failsafe_current_a": 6.0, "failsafe_after_s": 600})
        async with running(env):
            assert await set_profile(env, 0, profile(51, "TxDefaultProfile", [(0, 10.0)])) == "Accepted"
            await eventually(lambda: app_limit(env, 10.0), timeout_s=WAIT_S, message="limit 10 A")

        # Offline and no time source: neither NTP nor the central system's currentTime.
        await env.csms.stop()
        env.ntp.silent = True
        # A board with an RTC (the system clock is plausible): the stored profile applies.
        async with env.app() as app:
            entry = await eventually(lambda: app_limit(env, 10.0), timeout_s=WAIT_S, message="profile limit")
            assert entry["limit"]["source"] == "TxDefaultProfile #51"
            assert not app.clock.synced
        # A board without an RTC, booted at 1970: no schedule can be placed; the fail-safe
        # applies at once rather than after failsafe_after_s.
        rtc_less = Clock(wall=lambda: 86_400.0 + time.monotonic())
        async with env.app(clock=rtc_less) as app:
            entry = await eventually(lambda: app_limit(env, 6.0), timeout_s=WAIT_S, message="fail-safe limit")
            assert entry["limit"]["source"] == "failsafe"
            assert not app.clock.plausible


async def test_remote_start_profile_is_dropped_when_no_transaction_follows_and_a_later_one_is_unlimited_3_13_1(
        tmp_path: Path) -> None:
    async with charger_env(tmp_path, AuthorizeRemoteTxRequests=False, ConnectionTimeOut=1) as env:
        async with running(env):
            tx_profile = profile(23, "TxProfile", [(0, 8.0)], kind="Relative")
            conf = await env.csms.call(CP_ID, "RemoteStartTransaction",
                                       {"connectorId": 1, "idTag": "TAG1", "chargingProfile": tx_profile})
            assert conf["status"] == "Accepted"
            # No EV within ConnectionTimeOut: the remote start lapses (Preparing -> Available).
            preparing = await env.csms.wait_for(
                "StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "Preparing",
                timeout_s=WAIT_S)
            await env.csms.wait_for(
                "StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "Available",
                after_index=preparing.index + 1, timeout_s=WAIT_S)

            # A later, local transaction is not bound by that profile.
            await env.asim("sim.plug", connector=1)
            await env.asim("sim.swipe", id_tag="TAG2", connector=1)
            start = await env.csms.wait_for("StartTransaction", timeout_s=WAIT_S)
            assert start.payload["idTag"] == "TAG2"
            entry = await wait_offer(env, CONNECTOR_MAX_A)
            assert entry["limit"] == {"current_a": None, "source": None}
        env.csms.assert_no_violations()
