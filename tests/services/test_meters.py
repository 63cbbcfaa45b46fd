"""The meter service's cadence: an idle connector's meter is read at the idle interval, a plug-in
reads at once and a connector in use is read at the fast interval (services/meters.py).

Real app (unstarted), the simulated board and its meter (counted), the real connector loop.
No speed is asserted: the idle interval is 30 s and must not pass; the fast one 0.01 s and
must give many reads within a generous timeout.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from chargepoint.app import ChargePointApp
from chargepoint.config import parse_settings
from chargepoint.devtools.pki import ensure_pki
from chargepoint.services.meters import MeterService
from hal.interfaces import MeterReading
from hal.sim.board import SimBoard
from tests.support.harness import eventually


class CountingMeter:
    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.reads = 0

    async def read(self) -> MeterReading:
        self.reads += 1
        reading: MeterReading = await self._inner.read()
        return reading

    async def close(self) -> None:
        await self._inner.close()


@dataclass
class Rig:
    app: ChargePointApp
    board: SimBoard
    meter: CountingMeter
    meters: MeterService

    def sim(self, cmd: str) -> None:
        answer = self.board.handle_command({"cmd": f"sim.{cmd}", "connector": 1})
        assert answer["ok"], answer


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    settings = parse_settings({
        "ocpp": {"url": "wss://127.0.0.1:9/ocpp", "charge_point_id": "CP-UNIT", "password": "0123456789abcdef0123"},
        "tls": {"ca_file": str(ensure_pki(tmp_path / "pki").ca_cert)},
        "ntp": {"servers": ["127.0.0.1:9"]},
        "storage": {"state_dir": str(tmp_path / "state")},
        "control": {"socket": str(tmp_path / "control.sock")},
        "hal": {"backend": "sim"},
    })
    board = SimBoard(settings.storage.state_dir)
    meter = CountingMeter(board.connectors[0].meter)
    board.connectors[0].meter = meter
    app = ChargePointApp(settings, board=board)
    meters = MeterService(app, poll_interval_s=0.01, idle_poll_interval_s=30.0)
    tasks = [asyncio.create_task(app.controllers[1].run()), asyncio.create_task(meters.run())]
    try:
        yield Rig(app, board, meter, meters)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        app.store.close()


# The harness's poll, at a 5 ms cadence (these tests count steps and reads).
_until = functools.partial(eventually, interval_s=0.005)


@pytest.mark.asyncio
async def test_an_idle_meter_is_read_at_the_idle_interval_and_a_plug_in_reads_at_once(rig: Rig) -> None:
    await _until(lambda: rig.meters.latest(1) is not None)   # the first poll, for status
    await asyncio.sleep(0.2)
    reads = rig.meter.reads
    await asyncio.sleep(0.5)   # 50 fast intervals
    assert rig.meter.reads == reads
    rig.sim("plug")
    await _until(lambda: rig.meter.reads > reads)


@pytest.mark.asyncio
async def test_a_connector_in_use_is_read_at_the_fast_interval(rig: Rig) -> None:
    await _until(lambda: rig.meters.latest(1) is not None)
    rig.sim("plug")
    await _until(lambda: rig.app.controllers[1].plugged)
    reads = rig.meter.reads
    await _until(lambda: rig.meter.reads >= reads + 20)
    rig.sim("unplug")
    await _until(lambda: not rig.app.controllers[1].plugged)
    await asyncio.sleep(0.2)   # the read in flight at the unplug, if any
    reads = rig.meter.reads
    await asyncio.sleep(0.5)
    assert rig.meter.reads == reads   # idle again
