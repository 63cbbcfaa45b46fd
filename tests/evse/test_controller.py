"""The connector controller against the simulated hardware (hal.sim), with an injected clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chargepoint.evse.controller import (
    ConnectorController,
    ConnectorEvent,
    EvStartedDrawing,
    FaultCleared,
    FaultRaised,
    Plugged,
    StatusChanged,
    StatusDue,
    Unplugged,
)
from chargepoint.evse.status import ChargePointErrorCode, ChargePointStatus
from hal.interfaces import ConnectorHardware, CpState, Fault
from hal.sim import SimBoard

S = ChargePointStatus
E = ChargePointErrorCode


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 5000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


class Rig:
    """A SimBoard connector, a controller on it, and the events it emitted."""

    def __init__(self, tmp_path: Path, clock: FakeClock, hw: ConnectorHardware | None = None,
                 **kwargs: Any) -> None:
        self.clock = clock
        self.board = SimBoard(tmp_path, monotonic=clock)
        self.hw = hw or self.board.connector(1)
        self.events: list[ConnectorEvent] = []
        kwargs.setdefault("max_current_a", 32.0)
        self.ctl = ConnectorController(self.hw, monotonic=clock, pilot_raise_min_interval_s=5.0,
                                       relay_open_grace_s=3.0, on_change=self.events.append, **kwargs)

    def sim(self, cmd: str, **args: Any) -> None:
        answer = self.board.handle_command({"cmd": f"sim.{cmd}", "connector": 1, **args})
        assert answer["ok"], answer

    def steps(self, n: int = 3, dt_s: float = 0.2) -> None:
        for _ in range(n):
            self.ctl.step()
            self.clock.advance(dt_s)
            self.feed_meter()

    def feed_meter(self) -> None:
        # What the metering service does after each read.
        self.ctl.set_power_w(self.board.sim_meter(1).reading().power_w)

    def start_session(self, limit_a: float | None = None) -> None:
        self.sim("plug")
        self.ctl.set_limit_a(limit_a, "test")
        self.ctl.set_energy_allowed(True)
        self.ctl.set_transaction_active(True)
        self.steps()

    @property
    def status(self) -> ChargePointStatus | None:
        return self.ctl.status.status if self.ctl.status else None

    def of_type(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rig(tmp_path: Path, clock: FakeClock) -> Iterator[Rig]:
    yield Rig(tmp_path, clock)


def test_idle_connector_is_available_with_no_pwm_and_open_relay(rig: Rig) -> None:
    rig.steps(1)
    snap = rig.ctl.snapshot()
    assert snap["status"] == "Available" and snap["error_code"] == "NoError"
    assert snap["cp_state"] == "A" and snap["relay_closed"] is False
    assert snap["pilot_duty_percent"] == 100.0 and snap["offered_current_a"] == 0.0


def test_plug_without_authorization_is_preparing_and_offers_nothing(rig: Rig) -> None:
    rig.sim("plug")
    rig.steps()
    assert rig.status == S.PREPARING
    assert rig.of_type(Plugged) == [Plugged(1)]
    assert rig.ctl.snapshot()["pilot_duty_percent"] == 100.0 and not rig.hw.relay.commanded_closed


def test_authorized_session_charges_and_ev_draws_power(rig: Rig) -> None:
    rig.start_session(limit_a=16.0)
    snap = rig.ctl.snapshot()
    assert snap["cp_state"] == "C" and snap["relay_closed"] is True
    assert snap["offered_current_a"] == 16.0 and snap["pilot_duty_percent"] == pytest.approx(26.7)
    assert snap["limit_a"] == 16.0 and snap["limit_source"] == "test"
    assert rig.status == S.CHARGING
    assert rig.board.sim_meter(1).reading().power_w == pytest.approx(3 * 230 * 16)
    assert rig.of_type(EvStartedDrawing) == [EvStartedDrawing(1)]
    assert rig.hw.lock.is_locked()


def test_ev_not_taking_energy_is_suspended_ev(rig: Rig) -> None:
    rig.start_session()
    rig.sim("ev", charge=False)
    rig.steps()
    assert rig.ctl.cp_state == CpState.B and not rig.hw.relay.commanded_closed
    assert rig.status == S.SUSPENDED_EV


def test_raise_is_rate_limited_lowering_is_immediate(rig: Rig) -> None:
    rig.start_session(limit_a=10.0)
    assert rig.ctl.offered_current_a == 10.0
    rig.ctl.set_limit_a(20.0, "TxProfile")
    rig.steps(1)
    assert rig.ctl.offered_current_a == 10.0, "a raise within 5 s of the last one waits"
    assert rig.ctl.snapshot()["pending_offer_a"] == 20.0
    rig.clock.advance(5.0)
    rig.steps(1)
    assert rig.ctl.offered_current_a == 20.0
    assert rig.hw.pilot.duty_percent == pytest.approx(20 / 0.6)
    # Lowering right after a raise is applied in the very next step.
    rig.ctl.set_limit_a(8.0, "TxProfile")
    rig.ctl.step()
    assert rig.ctl.offered_current_a == 8.0 and rig.hw.pilot.duty_percent == pytest.approx(8 / 0.6)
    rig.feed_meter()
    assert rig.board.sim_meter(1).reading().power_w == pytest.approx(3 * 230 * 8)


def test_pause_at_limit_zero_then_resume(rig: Rig) -> None:
    rig.start_session(limit_a=16.0)
    rig.ctl.set_limit_a(0.0, "TxProfile")
    rig.ctl.step()
    # PWM off at once; the sim EV leaves C at once, the contactor follows on the next step.
    assert rig.hw.pilot.duty_percent == 100.0
    rig.steps(2)
    assert rig.ctl.cp_state == CpState.B and not rig.hw.relay.commanded_closed
    assert rig.board.sim_meter(1).reading().power_w == 0.0
    assert rig.status == S.SUSPENDED_EVSE
    # Resume: the first raise after >= 5 s is immediate.
    rig.clock.advance(5.0)
    rig.ctl.set_limit_a(16.0, "TxProfile")
    rig.steps(3)
    assert rig.ctl.offered_current_a == 16.0 and rig.hw.relay.commanded_closed
    assert rig.status == S.CHARGING


def test_limit_below_6a_is_suspended_evse_not_a_small_pwm(rig: Rig) -> None:
    rig.start_session(limit_a=5.0)
    assert rig.hw.pilot.duty_percent == 100.0 and rig.ctl.offered_current_a == 0.0
    assert rig.status == S.SUSPENDED_EVSE


def test_station_limit_and_cable_rating_cap_the_offer(tmp_path: Path, clock: FakeClock) -> None:
    station = [40.0]
    rig = Rig(tmp_path, clock, station_limit_a=lambda: station[0])
    rig.sim("plug", cable_rating_a=20.0)
    rig.ctl.set_energy_allowed(True)
    rig.steps()
    assert rig.ctl.offered_current_a == 20.0
    station[0] = 10.0
    rig.steps(1)
    assert rig.ctl.offered_current_a == 10.0


def test_ground_fault_opens_relay_drives_f_and_reports_faulted(rig: Rig) -> None:
    rig.start_session()
    rig.sim("fault", kind="ground_fault")
    rig.ctl.step()
    assert not rig.hw.relay.commanded_closed and rig.hw.pilot.duty_percent == 100.0
    rig.steps(2)
    assert rig.ctl.cp_state == CpState.F
    assert (rig.ctl.status.status, rig.ctl.status.error_code) == (S.FAULTED, E.GROUND_FAILURE)  # type: ignore[union-attr]
    assert FaultRaised(1, Fault.GROUND_FAULT) in rig.events
    # The EV is still plugged although the pilot reads F (we drive it): no unplug event.
    assert rig.of_type(Unplugged) == [] and rig.ctl.plugged
    rig.sim("clear")
    rig.clock.advance(5.0)
    rig.steps(4)
    assert FaultCleared(1, Fault.GROUND_FAULT) in rig.events
    assert rig.status == S.CHARGING and rig.hw.relay.commanded_closed


def test_meter_lost_is_a_warning_and_charging_continues(rig: Rig) -> None:
    rig.start_session()
    rig.ctl.set_meter_lost(True)
    rig.steps(1)
    assert rig.hw.relay.commanded_closed
    assert (rig.ctl.status.status, rig.ctl.status.error_code) == (S.CHARGING, E.POWER_METER_FAILURE)  # type: ignore[union-attr]


def test_lock_failure_keeps_contactor_open(rig: Rig) -> None:
    rig.sim("plug")
    rig.sim("fault", kind="lock_failure")
    rig.ctl.set_energy_allowed(True)
    rig.ctl.set_transaction_active(True)
    rig.steps(4)
    assert not rig.hw.relay.commanded_closed
    assert (rig.ctl.status.status, rig.ctl.status.error_code) == (S.FAULTED, E.CONNECTOR_LOCK_FAILURE)  # type: ignore[union-attr]
    rig.sim("clear")
    rig.clock.advance(6.0)
    rig.steps(4)
    assert rig.hw.lock.is_locked() and rig.hw.relay.commanded_closed and rig.status == S.CHARGING


def test_stop_then_unplug_goes_finishing_then_available(rig: Rig) -> None:
    rig.start_session()
    rig.ctl.set_energy_allowed(False)
    rig.ctl.set_transaction_active(False)
    rig.ctl.set_finishing(True)
    rig.steps()
    assert rig.status == S.FINISHING and not rig.hw.relay.commanded_closed
    assert not rig.hw.lock.is_locked(), "the cable is released after the session"
    rig.sim("unplug")
    rig.steps()
    assert rig.status == S.AVAILABLE and rig.of_type(Unplugged) == [Unplugged(1)]
    rig.sim("plug")
    rig.steps()
    assert rig.status == S.PREPARING, "finishing was cleared by the unplug (4.9 F1)"


def test_finishing_made_unavailable_comes_back_preparing_not_finishing_4_9_f8_h2(rig: Rig) -> None:
    """4.9: Finishing -> Unavailable is F8 ("all user actions completed"); set Available again
    with the cable still in, the connector is Preparing (H2). The table has no Unavailable ->
    Finishing (H6), which was reported after a Scheduled Inoperative (found by the schema fuzz)."""
    rig.start_session()
    rig.ctl.set_energy_allowed(False)
    rig.ctl.set_transaction_active(False)
    rig.ctl.set_finishing(True)
    rig.steps()
    assert rig.status == S.FINISHING
    rig.ctl.set_available(False)
    rig.steps()
    assert rig.status == S.UNAVAILABLE and rig.ctl.plugged
    rig.ctl.set_available(True)
    rig.steps()
    assert rig.status == S.PREPARING
    reported = [e.due.report.status for e in rig.of_type(StatusDue)]
    assert reported[-3:] == [S.FINISHING, S.UNAVAILABLE, S.PREPARING]
    assert all(e.due.illegal is None for e in rig.of_type(StatusDue))


def test_unavailable_drives_f_and_reserved(rig: Rig) -> None:
    rig.ctl.set_reserved(True)
    rig.steps(1)
    assert rig.status == S.RESERVED
    rig.ctl.set_reserved(False)
    rig.sim("plug")
    rig.ctl.set_available(False)
    rig.steps(2)
    assert rig.status == S.UNAVAILABLE
    assert rig.ctl.cp_state == CpState.F and rig.hw.pilot.duty_percent == 100.0
    assert rig.ctl.plugged, "the plug state is kept while we drive F ourselves"
    rig.ctl.set_available(True)
    rig.steps(2)
    assert rig.ctl.cp_state == CpState.B and rig.status == S.PREPARING
    assert rig.of_type(Unplugged) == []


def test_status_events_respect_minimum_status_duration(tmp_path: Path, clock: FakeClock) -> None:
    rig = Rig(tmp_path, clock, min_status_duration_s=lambda: 2.0)
    rig.steps(1)
    assert rig.of_type(StatusDue) == []
    rig.clock.advance(2.0)
    rig.steps(1)
    assert [e.due.report.status for e in rig.of_type(StatusDue)] == [S.AVAILABLE]
    rig.start_session()   # Preparing -> SuspendedEV -> Charging within 0.6 s: nothing due yet
    assert [e.due.report.status for e in rig.of_type(StatusDue)] == [S.AVAILABLE]
    assert [e.report.status for e in rig.of_type(StatusChanged)][-1] == S.CHARGING
    rig.clock.advance(2.0)
    rig.steps(1)
    assert [e.due.report.status for e in rig.of_type(StatusDue)] == [S.AVAILABLE, S.CHARGING]
    assert rig.of_type(StatusDue)[-1].due.illegal is None   # A3


# --------------------------------------------------------------------------- order of operations


class Recorder:
    """Wraps a driver and records the commands sent to it, in order, into a shared log."""

    def __init__(self, inner: Any, name: str, log: list[tuple[str, Any]]) -> None:
        self._inner, self._name, self._log = inner, name, log

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._inner, attr)
        if callable(value) and attr in ("offer_current", "set_fault_signal", "set_closed", "set_locked"):
            def record(*args: Any) -> Any:
                self._log.append((f"{self._name}.{attr}", args[0]))
                return value(*args)
            return record
        return value


def test_pwm_before_contactor_closes_and_contactor_first_on_fault(tmp_path: Path, clock: FakeClock) -> None:
    log: list[tuple[str, Any]] = []
    board = SimBoard(tmp_path / "b", monotonic=clock)
    base = board.connector(1)
    hw = replace(base, pilot=Recorder(base.pilot, "pilot", log), relay=Recorder(base.relay, "relay", log),
                 lock=Recorder(base.lock, "lock", log))
    rig = Rig(tmp_path, clock, hw=hw)
    rig.board = board
    rig.start_session(limit_a=16.0)
    commands = [c for c in log if c[1] not in (False, 0.0)]
    assert commands.index(("lock.set_locked", True)) < commands.index(("relay.set_closed", True))
    assert commands.index(("pilot.offer_current", 16.0)) < commands.index(("relay.set_closed", True))
    log.clear()
    rig.sim("fault", kind="overcurrent")
    rig.ctl.step()
    assert log[0] == ("relay.set_closed", False), log
    assert log.index(("pilot.offer_current", 0.0)) < log.index(("pilot.set_fault_signal", True))


# --------------------------------------------------------------------------- the loop


@pytest.mark.asyncio
async def test_run_applies_a_new_limit_at_once_when_poked(tmp_path: Path) -> None:
    board = SimBoard(tmp_path)
    ctl = ConnectorController(board.connector(1), max_current_a=32.0, step_interval_s=30.0)
    board.add_listener(lambda change: ctl.poke())
    task = asyncio.create_task(ctl.run())
    try:
        assert board.handle_command({"cmd": "sim.plug", "connector": 1})["ok"]
        ctl.set_energy_allowed(True)
        await _until(lambda: ctl.snapshot()["relay_closed"])
        ctl.set_limit_a(0.0, "TxProfile")   # the loop would otherwise sleep 30 s
        await _until(lambda: board.connector(1).pilot.duty_percent == 100.0
                     and not board.connector(1).relay.commanded_closed)
        assert ctl.status is not None and ctl.status.status == S.SUSPENDED_EVSE
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.asyncio
async def test_run_survives_a_failing_hal_read_and_forces_safe_state(tmp_path: Path) -> None:
    board = SimBoard(tmp_path)
    base = board.connector(1)
    broken = {"on": False}

    class FlakyFaults:
        def active_faults(self) -> frozenset[Fault]:
            if broken["on"]:
                raise OSError("i2c read failed")
            return base.faults.active_faults()

    ctl = ConnectorController(replace(base, faults=FlakyFaults()), max_current_a=32.0, step_interval_s=0.05)
    task = asyncio.create_task(ctl.run())
    try:
        board.handle_command({"cmd": "sim.plug", "connector": 1})
        ctl.set_energy_allowed(True)
        await _until(lambda: base.relay.commanded_closed)
        broken["on"] = True
        await _until(lambda: not base.relay.commanded_closed and base.pilot.duty_percent == 100.0)
        broken["on"] = False
        await _until(lambda: base.relay.commanded_closed)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def _until(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the timeout")
        await asyncio.sleep(0.01)


class LaggingPilot:
    """The sim pilot, but the line still reads F for `lag_reads` reads after -12 V is released."""

    def __init__(self, inner: Any, lag_reads: int = 1) -> None:
        self._inner, self._lag_reads, self._pending = inner, lag_reads, 0
        self.stuck_f = False

    def offer_current(self, current_a: float) -> None:
        self._inner.offer_current(current_a)

    @property
    def duty_percent(self) -> float:
        return float(self._inner.duty_percent)

    def set_fault_signal(self, on: bool) -> None:
        if not on:
            self._pending = self._lag_reads
        self._inner.set_fault_signal(on)

    def read_state(self) -> CpState:
        if self.stuck_f:
            return CpState.F
        if self._pending:
            self._pending -= 1
            return CpState.F
        return CpState(self._inner.read_state())


def test_f_still_read_just_after_release_is_not_a_pilot_fault(tmp_path: Path, clock: FakeClock) -> None:
    board = SimBoard(tmp_path / "b", monotonic=clock)
    pilot = LaggingPilot(board.connector(1).pilot)
    rig = Rig(tmp_path, clock, hw=replace(board.connector(1), pilot=pilot))
    rig.board = board
    rig.ctl.set_available(False)
    rig.steps(2)
    rig.ctl.set_available(True)
    rig.steps(3, dt_s=0.1)
    assert Fault.PILOT_FAULT not in {e.fault for e in rig.of_type(FaultRaised)}
    assert rig.status == S.AVAILABLE


def test_f_we_do_not_drive_is_a_pilot_fault_warning_4_9(tmp_path: Path, clock: FakeClock) -> None:
    board = SimBoard(tmp_path / "b", monotonic=clock)
    pilot = LaggingPilot(board.connector(1).pilot, lag_reads=0)
    rig = Rig(tmp_path, clock, hw=replace(board.connector(1), pilot=pilot))
    rig.board = board
    rig.start_session()
    pilot.stuck_f = True
    rig.steps(2)
    assert FaultRaised(1, Fault.PILOT_FAULT) in rig.events
    assert not board.connector(1).relay.commanded_closed
    report = rig.ctl.status
    assert report is not None and (report.status, report.error_code) == (S.SUSPENDED_EVSE, E.EV_COMMUNICATION_ERROR)


@pytest.mark.asyncio
async def test_without_idle_polling_a_quiet_connector_still_reports_a_due_status_and_sees_a_plug(
        tmp_path: Path) -> None:
    """idle_step_interval_s=None (a backend that reports its changes): a quiet connector sleeps
    until poked, yet the status MinimumStatusDuration held back is reported when due, and a
    reported plug is seen."""
    board = SimBoard(tmp_path)
    events: list[ConnectorEvent] = []
    ctl = ConnectorController(board.connector(1), max_current_a=32.0, idle_step_interval_s=None,
                              min_status_duration_s=lambda: 0.3, on_change=events.append)
    board.add_listener(lambda change: ctl.poke())
    task = asyncio.create_task(ctl.run())
    try:
        # Nothing pokes the controller: only the due time of the held-back status can wake it.
        await _until(lambda: [e.due.report.status for e in events if isinstance(e, StatusDue)] == [S.AVAILABLE])
        assert board.handle_command({"cmd": "sim.plug", "connector": 1})["ok"]
        await _until(lambda: ctl.status is not None and ctl.status.status == S.PREPARING)
        assert Plugged(1) in events
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
