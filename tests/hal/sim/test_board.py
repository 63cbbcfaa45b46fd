"""The simulated hardware: EV physics, energy, faults, sim.* commands (interfaces.md §6)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hal.interfaces import Board, CpState, Fault, MeterError
from hal.sim import SimBoard, SimChange
from hal.sim.board import STATE_FILE_NAME
from tests.hal.clock import FakeClock


def make_board(tmp_path: Path, clock: FakeClock, phases: tuple[int, ...] = (3,), **kw: Any) -> SimBoard:
    return SimBoard(tmp_path, connector_phases=phases, monotonic=clock, **kw)


def ok(board: SimBoard, **request: Any) -> dict[str, Any]:
    response = board.handle_command(request)
    assert response["ok"], response
    return response["result"]


def refused(board: SimBoard, **request: Any) -> str:
    response = board.handle_command(request)
    assert response["ok"] is False, response
    assert isinstance(response["error"], str) and response["error"]
    return response["error"]


def charge(board: SimBoard, current_a: float, connector_id: int = 1) -> None:
    hw = board.connector(connector_id)
    hw.pilot.offer_current(current_a)
    hw.relay.set_closed(True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def board(tmp_path: Path, clock: FakeClock) -> SimBoard:
    return make_board(tmp_path, clock)


# --------------------------------------------------------------------------- EV and pilot


def test_sim_board_is_a_board_with_defaults(board: SimBoard) -> None:
    assert isinstance(board, Board)
    hw = board.connector(1)
    assert hw.pilot.read_state() is CpState.A
    assert hw.pilot.duty_percent == 100.0
    assert hw.relay.commanded_closed is False
    assert hw.relay.feedback_closed() is False
    assert hw.faults.active_faults() == frozenset()
    assert board.network.active_link() == "wifi"
    assert [link.name for link in board.network.links()] == ["wifi", "gsm"]


def test_plug_gives_state_b_without_pwm_iec61851_a(board: SimBoard) -> None:
    ok(board, cmd="sim.plug", connector=1)
    hw = board.connector(1)
    assert hw.pilot.read_state() is CpState.B
    # 100 % duty is no PWM: a car that wants energy still waits in B.
    hw.pilot.offer_current(0)
    assert hw.pilot.duty_percent == 100.0
    assert hw.pilot.read_state() is CpState.B


def test_pwm_offer_puts_a_willing_ev_in_state_c(board: SimBoard) -> None:
    ok(board, cmd="sim.plug", connector=1)
    hw = board.connector(1)
    hw.pilot.offer_current(16)
    assert hw.pilot.duty_percent == pytest.approx(26.667, abs=0.01)
    assert hw.pilot.read_state() is CpState.C
    ok(board, cmd="sim.ev", connector=1, charge=False)
    assert hw.pilot.read_state() is CpState.B


def test_offer_below_6a_is_no_pwm_and_keeps_state_b(board: SimBoard) -> None:
    ok(board, cmd="sim.plug", connector=1)
    hw = board.connector(1)
    hw.pilot.offer_current(5.9)
    assert hw.pilot.duty_percent == 100.0
    assert hw.pilot.read_state() is CpState.B


def test_fault_signal_reads_f_and_pilot_fault_reads_e(board: SimBoard) -> None:
    ok(board, cmd="sim.plug", connector=1)
    hw = board.connector(1)
    hw.pilot.offer_current(16)
    hw.pilot.set_fault_signal(True)
    assert hw.pilot.read_state() is CpState.F
    assert hw.pilot.duty_percent == 100.0
    hw.pilot.set_fault_signal(False)
    assert hw.pilot.read_state() is CpState.C
    ok(board, cmd="sim.fault", connector=1, kind="pilot_fault")
    assert hw.pilot.read_state() is CpState.E
    assert Fault.PILOT_FAULT in hw.faults.active_faults()


@pytest.mark.asyncio
async def test_ev_draws_min_of_offer_and_own_max_only_in_c_with_relay_closed(board: SimBoard) -> None:
    hw = board.connector(1)
    ok(board, cmd="sim.plug", connector=1)
    ok(board, cmd="sim.ev", connector=1, max_current_a=10)
    hw.pilot.offer_current(16)
    assert hw.pilot.read_state() is CpState.C
    # Relay open: no current although the car is in C.
    assert (await hw.meter.read()).current_a == (0.0, 0.0, 0.0)
    hw.relay.set_closed(True)
    reading = await hw.meter.read()
    assert reading.current_a == (10.0, 10.0, 10.0)
    assert reading.voltage_v == (230.0, 230.0, 230.0)
    assert reading.power_w == pytest.approx(3 * 230 * 10)
    # The offer below the car's maximum limits it.
    hw.pilot.offer_current(8)
    assert (await hw.meter.read()).current_a == (8.0, 8.0, 8.0)
    # Paused (no PWM): the car goes back to B and draws nothing, relay still closed.
    hw.pilot.offer_current(0)
    assert hw.pilot.read_state() is CpState.B
    assert (await hw.meter.read()).power_w == 0.0


@pytest.mark.asyncio
async def test_single_phase_ev_loads_l1_only(board: SimBoard) -> None:
    ok(board, cmd="sim.plug", connector=1)
    ok(board, cmd="sim.ev", connector=1, phases=1)
    charge(board, 16)
    reading = await board.connector(1).meter.read()
    assert reading.current_a == (16.0, 0.0, 0.0)
    assert reading.power_w == pytest.approx(230 * 16)


@pytest.mark.asyncio
async def test_three_phase_ev_on_single_phase_connector_loads_its_one_phase(tmp_path: Path, clock: FakeClock) -> None:
    board = make_board(tmp_path, clock, phases=(3, 1))
    ok(board, cmd="sim.plug", connector=2)
    charge(board, 32, connector_id=2)
    reading = await board.connector(2).meter.read()
    assert board.connector(2).phases == 1
    assert reading.current_a == (32.0,)
    assert reading.voltage_v == (230.0,)
    # Connector 1 is untouched.
    assert (await board.connector(1).meter.read()).power_w == 0.0


# --------------------------------------------------------------------------- energy


@pytest.mark.asyncio
async def test_energy_integrates_with_injected_clock(board: SimBoard, clock: FakeClock) -> None:
    ok(board, cmd="sim.plug", connector=1)
    charge(board, 16)
    clock.advance(3600)
    reading = await board.connector(1).meter.read()
    assert reading.energy_wh == pytest.approx(16 * 3 * 230)  # 11040 Wh
    # Opening the relay stops the count.
    board.connector(1).relay.set_closed(False)
    clock.advance(3600)
    assert (await board.connector(1).meter.read()).energy_wh == pytest.approx(11040)


@pytest.mark.asyncio
async def test_energy_counts_each_power_level_for_its_own_time(board: SimBoard, clock: FakeClock) -> None:
    ok(board, cmd="sim.plug", connector=1)
    charge(board, 32)
    clock.advance(1800)
    board.connector(1).pilot.offer_current(16)  # lowered by smart charging
    clock.advance(1800)
    ok(board, cmd="sim.ev", connector=1, charge=False)  # car full
    clock.advance(1800)
    expected_wh = 32 * 3 * 230 * 0.5 + 16 * 3 * 230 * 0.5
    assert (await board.connector(1).meter.read()).energy_wh == pytest.approx(expected_wh)


@pytest.mark.asyncio
async def test_meter_register_is_committed_at_most_every_persist_interval(board: SimBoard, clock: FakeClock) -> None:
    ok(board, cmd="sim.plug", connector=1)
    charge(board, 16)
    state_file = board.state_path
    before = state_file.read_bytes()
    clock.advance(1.0)  # under the 2 s interval: no write, the register has not moved yet
    first = await board.connector(1).meter.read()
    assert first.energy_wh == 0.0
    assert first.power_w > 0
    assert state_file.read_bytes() == before
    clock.advance(1.5)
    second = await board.connector(1).meter.read()
    assert second.energy_wh == pytest.approx(16 * 3 * 230 * 2.5 / 3600)
    assert json.loads(state_file.read_text())["connectors"]["1"]["energy_wh"] == pytest.approx(second.energy_wh)


# --------------------------------------------------------------------------- faults


@pytest.mark.asyncio
async def test_relay_weld_keeps_feedback_closed_after_opening(board: SimBoard, clock: FakeClock) -> None:
    hw = board.connector(1)
    ok(board, cmd="sim.plug", connector=1)
    charge(board, 16)
    ok(board, cmd="sim.fault", connector=1, kind="relay_weld")
    # Still commanded closed: feedback agrees, nothing to detect yet.
    assert Fault.RELAY_WELD not in hw.faults.active_faults()
    hw.relay.set_closed(False)
    assert hw.relay.commanded_closed is False
    assert hw.relay.feedback_closed() is True
    assert Fault.RELAY_WELD in hw.faults.active_faults()
    # Welded contacts still carry current while the car is in C.
    assert (await hw.meter.read()).power_w > 0
    ok(board, cmd="sim.clear", connector=1)
    assert hw.relay.feedback_closed() is False
    assert hw.faults.active_faults() == frozenset()


@pytest.mark.asyncio
async def test_meter_lost_raises_meter_error_and_energy_keeps_counting(board: SimBoard, clock: FakeClock) -> None:
    hw = board.connector(1)
    ok(board, cmd="sim.plug", connector=1)
    charge(board, 16)
    ok(board, cmd="sim.fault", connector=1, kind="meter_lost")
    clock.advance(3600)
    with pytest.raises(MeterError):
        await hw.meter.read()
    ok(board, cmd="sim.clear", connector=1, kind="meter_lost")
    assert (await hw.meter.read()).energy_wh == pytest.approx(11040)


def test_lock_failure_fails_the_lock_command(board: SimBoard) -> None:
    hw = board.connector(1)
    ok(board, cmd="sim.fault", connector=1, kind="lock_failure")
    assert hw.lock.set_locked(True) is False
    assert hw.lock.is_locked() is False
    assert Fault.LOCK_FAILURE in hw.faults.active_faults()
    ok(board, cmd="sim.clear", connector=1)
    assert hw.lock.is_locked() is True
    assert hw.lock.set_locked(False) is True
    assert hw.faults.active_faults() == frozenset()


@pytest.mark.asyncio
@pytest.mark.parametrize(("kind", "fault"), [("ground_fault", Fault.GROUND_FAULT), ("overcurrent", Fault.OVERCURRENT)])
async def test_tripped_protection_is_reported_and_cuts_the_current(board: SimBoard, kind: str, fault: Fault) -> None:
    hw = board.connector(1)
    ok(board, cmd="sim.plug", connector=1)
    charge(board, 16)
    ok(board, cmd="sim.fault", connector=1, kind=kind)
    assert hw.faults.active_faults() == frozenset({fault})
    assert (await hw.meter.read()).power_w == 0.0


# --------------------------------------------------------------------------- persistence


@pytest.mark.asyncio
async def test_hardware_state_survives_a_daemon_restart(tmp_path: Path, clock: FakeClock) -> None:
    board = make_board(tmp_path, clock, phases=(3, 3))
    ok(board, cmd="sim.plug", connector=2)
    ok(board, cmd="sim.ev", connector=2, max_current_a=20, phases=1)
    ok(board, cmd="sim.fault", connector=1, kind="ground_fault")
    ok(board, cmd="sim.link", name="wifi", up=False)
    charge(board, 16, connector_id=2)
    clock.advance(3600)
    last_seen = await board.connector(2).meter.read()
    assert last_seen.energy_wh == pytest.approx(16 * 230)
    # kill -9: no close(). A new process starts on the same state_dir, later.
    clock.advance(600)
    again = make_board(tmp_path, clock, phases=(3, 3))
    hw = again.connector(2)
    assert hw.pilot.read_state() is CpState.B           # still plugged; no PWM after power-up
    assert hw.pilot.duty_percent == 100.0
    assert hw.relay.commanded_closed is False            # relay comes back open
    assert hw.relay.feedback_closed() is False
    reading = await hw.meter.read()
    assert reading.energy_wh == pytest.approx(last_seen.energy_wh)  # no energy while down, none lost
    assert reading.power_w == 0.0
    assert again.connector(1).faults.active_faults() == frozenset({Fault.GROUND_FAULT})
    assert again.network.active_link() == "gsm"
    snapshot = again.snapshot()["connectors"][1]
    assert snapshot["ev"] == {"wants_energy": True, "max_current_a": 20.0, "phases": 1, "cable_rating_a": None}


@pytest.mark.asyncio
async def test_register_after_kill_is_never_below_a_value_already_read(tmp_path: Path, clock: FakeClock) -> None:
    board = make_board(tmp_path, clock)
    ok(board, cmd="sim.plug", connector=1)
    charge(board, 32)
    seen = []
    for _ in range(7):
        clock.advance(0.7)
        seen.append((await board.connector(1).meter.read()).energy_wh)
    again = make_board(tmp_path, clock)
    assert (await again.connector(1).meter.read()).energy_wh >= max(seen)
    assert max(seen) > 0


@pytest.mark.asyncio
async def test_clean_close_commits_the_exact_register(tmp_path: Path, clock: FakeClock) -> None:
    board = make_board(tmp_path, clock)
    ok(board, cmd="sim.plug", connector=1)
    charge(board, 16)
    clock.advance(0.5)
    await board.close()
    again = make_board(tmp_path, clock)
    assert (await again.connector(1).meter.read()).energy_wh == pytest.approx(16 * 3 * 230 * 0.5 / 3600)


def test_corrupt_state_file_starts_fresh(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / STATE_FILE_NAME).write_text("{not json")
    board = make_board(tmp_path, clock)
    assert board.connector(1).pilot.read_state() is CpState.A
    ok(board, cmd="sim.plug", connector=1)
    assert json.loads((tmp_path / STATE_FILE_NAME).read_text())["connectors"]["1"]["plugged"] is True


# --------------------------------------------------------------------------- commands


def test_commands_refuse_bad_requests_without_raising(board: SimBoard) -> None:
    assert "unknown connector" in refused(board, cmd="sim.plug", connector=2)
    assert "connector" in refused(board, cmd="sim.plug")
    assert "connector" in refused(board, cmd="sim.plug", connector=True)
    assert "unknown fault kind" in refused(board, cmd="sim.fault", connector=1, kind="meteor_strike")
    assert "kind" in refused(board, cmd="sim.fault", connector=1)
    assert "no EV plugged" in refused(board, cmd="sim.ev", connector=1, charge=True)
    ok(board, cmd="sim.plug", connector=1)
    assert "charge" in refused(board, cmd="sim.ev", connector=1, charge="yes")
    assert "max_current_a" in refused(board, cmd="sim.ev", connector=1, max_current_a=-3)
    assert "max_current_a" in refused(board, cmd="sim.ev", connector=1, max_current_a="32")
    assert "phases" in refused(board, cmd="sim.ev", connector=1, phases=4)
    assert "unknown link" in refused(board, cmd="sim.link", name="ethernet", up=False)
    assert "up" in refused(board, cmd="sim.link", name="wifi", up="down")
    assert "id_tag" in refused(board, cmd="sim.swipe", id_tag="X" * 21)
    assert "unknown sim command" in refused(board, cmd="sim.teleport")
    # A refused sim.ev changed nothing.
    ev = ok(board, cmd="sim.state")["connectors"][0]["ev"]
    assert ev == {"wants_energy": True, "max_current_a": 32.0, "phases": 3, "cable_rating_a": None}


def test_handle_command_survives_non_dict_requests(board: SimBoard) -> None:
    junk_requests: list[Any] = [None, [], "sim.plug", 3]
    for junk in junk_requests:
        response = board.handle_command(junk)
        assert response["ok"] is False


def test_replug_resets_ev_to_defaults(board: SimBoard) -> None:
    ok(board, cmd="sim.plug", connector=1)
    ok(board, cmd="sim.ev", connector=1, charge=False, max_current_a=10, phases=1)
    ok(board, cmd="sim.unplug", connector=1)
    assert board.connector(1).pilot.read_state() is CpState.A
    result = ok(board, cmd="sim.plug", connector=1)
    assert result["connector"]["ev"] == {"wants_energy": True, "max_current_a": 32.0, "phases": 3,
                                         "cable_rating_a": None}


def test_links_fail_over_in_preference_order(board: SimBoard) -> None:
    result = ok(board, cmd="sim.link", name="wifi", up=False)
    assert result["active_link"] == "gsm"
    ok(board, cmd="sim.link", name="gsm", up=False)
    assert board.network.active_link() is None
    ok(board, cmd="sim.link", name="wifi", up=True)
    assert board.network.active_link() == "wifi"


@pytest.mark.asyncio
async def test_swipe_delivers_the_id_tag_to_sync_and_async_listeners(board: SimBoard) -> None:
    assert "listens" in refused(board, cmd="sim.swipe", id_tag="TAG1")
    seen: list[str] = []
    board.id_reader.set_listener(seen.append)
    ok(board, cmd="sim.swipe", id_tag="TAG1", connector=1)
    assert seen == ["TAG1"]

    delivered = asyncio.Event()

    async def listener(id_tag: str) -> None:
        seen.append(id_tag)
        delivered.set()

    board.id_reader.set_listener(listener)
    result = ok(board, cmd="sim.swipe", id_tag="TAG2")
    assert result == {"id_tag": "TAG2", "connector": None}
    await asyncio.wait_for(delivered.wait(), timeout=5)
    assert seen == ["TAG1", "TAG2"]


def test_listeners_hear_plug_and_unplug_but_not_no_ops(board: SimBoard) -> None:
    changes: list[SimChange] = []
    board.add_listener(changes.append)
    ok(board, cmd="sim.plug", connector=1)
    ok(board, cmd="sim.plug", connector=1)  # already plugged: no change
    ok(board, cmd="sim.unplug", connector=1)
    ok(board, cmd="sim.link", name="gsm", up=False)
    assert changes == [SimChange("plug", 1), SimChange("unplug", 1), SimChange("link", None)]


def test_a_failing_listener_does_not_break_the_command(board: SimBoard) -> None:
    def broken(change: SimChange) -> None:
        raise RuntimeError("boom")

    board.add_listener(broken)
    ok(board, cmd="sim.plug", connector=1)
    assert board.connector(1).pilot.read_state() is CpState.B


def test_proximity_reports_cable_rating_of_a_loose_cable(board: SimBoard) -> None:
    pp = board.connector(1).proximity
    assert pp is not None
    assert pp.cable_rating_a() is None
    ok(board, cmd="sim.plug", connector=1, cable_rating_a=20)
    assert pp.cable_rating_a() == 20.0


_json_scalars = st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=True) | st.text(max_size=25)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=st.fixed_dictionaries(
    {"cmd": st.sampled_from(["sim.plug", "sim.unplug", "sim.ev", "sim.swipe", "sim.fault", "sim.clear",
                             "sim.link", "sim.state", "sim.nope"])},
    optional={key: _json_scalars for key in ("connector", "charge", "max_current_a", "phases", "kind", "id_tag",
                                             "name", "up", "cable_rating_a")},
))
def test_any_request_gets_an_answer_never_an_exception(board: SimBoard, request: dict[str, Any]) -> None:
    response = board.handle_command(request)
    assert set(response) in ({"ok", "result"}, {"ok", "error"})
    assert (response["ok"] is True) == ("result" in response)
    json.dumps(response, allow_nan=False)  # the control socket can always send it
