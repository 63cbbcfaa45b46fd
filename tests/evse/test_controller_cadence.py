"""The controller loop's cadence: a quiet connector (nothing plugged, contactor open, no fault,
nothing authorized) is stepped at the idle interval, a plugged one at the fast interval, and a
poke (a setter, the HAL's plug listener) steps at once whatever the cadence. A meter reading
that changes nothing does not step an idle connector.

No speed is asserted: a quiet connector is given a 30 s idle interval and must not be stepped
(a loaded machine only makes the loop slower); a busy one a 0.01 s interval and must be stepped
many times within a generous timeout.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from chargepoint.evse.controller import ConnectorController, Plugged
from hal.interfaces import CpState
from hal.sim import SimBoard
from tests.support.harness import eventually

IDLE_S = 30.0
FAST_S = 0.01


class CountingPilot:
    """The sim pilot, counting how often the controller reads it (once per step)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.reads = 0

    def read_state(self) -> CpState:
        self.reads += 1
        state: CpState = self._inner.read_state()
        return state

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.board = SimBoard(tmp_path)
        base = self.board.connector(1)
        self.pilot = CountingPilot(base.pilot)
        self.events: list[Any] = []
        self.ctl = ConnectorController(replace(base, pilot=self.pilot), max_current_a=32.0,
                                       step_interval_s=FAST_S, idle_step_interval_s=IDLE_S,
                                       on_change=self.events.append)

    def sim(self, cmd: str, **args: Any) -> None:
        answer = self.board.handle_command({"cmd": f"sim.{cmd}", "connector": 1, **args})
        assert answer["ok"], answer


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    task = asyncio.create_task(rig.ctl.run())
    try:
        yield rig
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# The harness's poll, at a 5 ms cadence (these tests count steps and reads).
_until = functools.partial(eventually, interval_s=0.005)


async def _settled(rig: Rig) -> int:
    """Wait until the first steps are done and the loop sleeps; the read count then."""
    await _until(lambda: rig.ctl.status is not None)
    await asyncio.sleep(0.1)
    return rig.pilot.reads


@pytest.mark.asyncio
async def test_a_quiet_connector_is_not_stepped_at_the_fast_rate(rig: Rig) -> None:
    reads = await _settled(rig)
    await asyncio.sleep(0.5)   # 50 fast intervals
    assert rig.pilot.reads == reads


@pytest.mark.asyncio
async def test_a_poke_steps_at_once_and_a_plugged_connector_is_stepped_at_the_fast_rate(rig: Rig) -> None:
    await _settled(rig)
    rig.sim("plug")
    rig.ctl.poke()              # what the app's HAL listener does on a plug event
    await _until(lambda: any(isinstance(e, Plugged) for e in rig.events))
    reads = rig.pilot.reads
    await _until(lambda: rig.pilot.reads >= reads + 20)


@pytest.mark.asyncio
async def test_authorized_waiting_for_the_plug_is_not_quiet_the_plug_is_seen_without_a_poke(rig: Rig) -> None:
    await _settled(rig)
    rig.ctl.set_preparing(True)   # §4.9 A2: an idTag was presented, the cable comes next
    await asyncio.sleep(0.05)
    rig.sim("plug")               # no poke: hardware that does not report changes
    await _until(lambda: any(isinstance(e, Plugged) for e in rig.events))


@pytest.mark.asyncio
async def test_an_unchanged_meter_reading_does_not_step_an_idle_connector(rig: Rig) -> None:
    rig.ctl.set_power_w(0.0)
    reads = await _settled(rig)
    for _ in range(5):
        rig.ctl.set_power_w(0.0)
        await asyncio.sleep(0.02)
    assert rig.pilot.reads == reads
    rig.ctl.set_power_w(None)     # the meter stopped answering: a change, looked at
    await _until(lambda: rig.pilot.reads > reads)
