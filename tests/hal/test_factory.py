"""hal.factory.build_board: the backend and meters the configuration asks for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chargepoint.config import ConfigError, Settings, parse_settings
from hal.factory import build_board
from hal.interfaces import CpState
from hal.modbus.meter import ModbusMeter
from hal.modbus.registers import SDM630
from hal.modbus.sim_server import SimulatedMeter, SimulatedMeterServer
from hal.sim import SimBoard
from tests.hal.clock import FakeClock
from tests.hal.linux.test_board import make_tree
from tests.hal.linux.test_board import options as linux_options


def settings(tmp_path: Path, **tables: Any) -> Settings:
    doc: dict[str, Any] = {
        "ocpp": {"url": "wss://csms.example/ocpp", "charge_point_id": "CP-1", "password": "0123456789abcdef"},
        "storage": {"state_dir": str(tmp_path / "state")},
    }
    doc.update(tables)
    return parse_settings(doc)


def test_sim_backend_builds_a_sim_board_from_the_configuration(tmp_path: Path) -> None:
    cfg = settings(tmp_path, connector=[{"phases": 3}, {"phases": 1}], network={"links": ["ethernet", "gsm"]})
    board = build_board(cfg, monotonic=FakeClock())
    assert isinstance(board, SimBoard)
    assert board.extra["sim"] is board
    assert [c.phases for c in board.connectors] == [3, 1]
    assert [link.name for link in board.network.links()] == ["ethernet", "gsm"]
    assert board.handle_command({"cmd": "sim.plug", "connector": 2})["ok"]
    assert (tmp_path / "state" / "sim-hardware.json").exists()
    # A second daemon start on the same state_dir sees the plugged EV.
    again = build_board(cfg, monotonic=FakeClock())
    assert again.connector(2).pilot.read_state() is CpState.B


def test_bad_persist_interval_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build_board(settings(tmp_path, hal={"backend": "sim", "persist_interval_s": "often"}))
    assert info.value.key == "hal.persist_interval_s"


@pytest.mark.asyncio
async def test_sim_with_a_meter_table_reads_the_ev_through_modbus(tmp_path: Path) -> None:
    clock = FakeClock()
    # The external meter is a real Modbus server measuring the simulated EV.
    holder: dict[str, SimBoard] = {}
    server = SimulatedMeterServer(SimulatedMeter(SDM630, lambda: holder["board"].sim_meter(1).reading()))
    port = await server.start_tcp()
    try:
        cfg = settings(tmp_path, meter={"driver": "sdm630", "transport": "tcp", "port": port, "timeout_s": 1.0})
        board = build_board(cfg, monotonic=clock)
        assert isinstance(board, SimBoard)
        holder["board"] = board
        hw = board.connector(1)
        assert isinstance(hw.meter, ModbusMeter)
        assert board.handle_command({"cmd": "sim.plug", "connector": 1})["ok"]
        hw.pilot.offer_current(16)
        hw.relay.set_closed(True)
        clock.advance(3600)
        reading = await hw.meter.read()
        assert reading.power_w == pytest.approx(11040.0)
        assert reading.current_a == (16.0, 16.0, 16.0)
        assert reading.energy_wh == pytest.approx(11040.0, abs=0.01)
        await board.close()
    finally:
        await server.stop()


def test_linux_backend_builds_from_the_hal_table(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    cfg = settings(tmp_path, hal={"backend": "linux", **linux_options(root)}, network={"links": ["wifi"]})
    board = build_board(cfg)
    assert not isinstance(board, SimBoard)
    assert board.connector(1).pilot.read_state() is CpState.A
    assert board.network.active_link() == "wifi"


@pytest.mark.asyncio
async def test_serve_sim_meter_exposes_the_sim_board_meter_over_modbus_tcp(tmp_path: Path) -> None:
    from hal.modbus.sim_server import serve_sim_meter

    clock = FakeClock()
    board = SimBoard(tmp_path, monotonic=clock)
    server = await serve_sim_meter(board, 1, driver="em340", unit_id=5)
    try:
        assert server.port is not None
        cfg = settings(tmp_path, meter={"driver": "em340", "transport": "tcp", "port": server.port, "unit_id": 5,
                                        "timeout_s": 1.0})
        meter_settings = cfg.connectors[0].meter
        assert meter_settings is not None
        meter = ModbusMeter.from_settings(meter_settings)
        assert board.handle_command({"cmd": "sim.plug", "connector": 1})["ok"]
        assert board.handle_command({"cmd": "sim.ev", "connector": 1, "phases": 1})["ok"]
        board.connector(1).pilot.offer_current(10)
        board.connector(1).relay.set_closed(True)
        clock.advance(1800)
        reading = await meter.read()
        assert reading.current_a == (10.0, 0.0, 0.0)
        assert reading.energy_wh == pytest.approx(1100.0, abs=100)  # EM340 counts in 0.1 kWh
        await meter.close()
    finally:
        await server.stop()
