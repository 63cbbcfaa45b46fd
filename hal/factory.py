"""Build the Board the configuration asks for (`[hal] backend`).

- "sim": hal.sim.SimBoard on storage.state_dir (its hardware state persists there).
- "linux": hal.linux, sysfs PWM/GPIO/ADC configured by the [hal] table.

Either way a connector with a [meter] table gets a ModbusMeter in place of the
backend's own meter; meters on the same serial port or TCP endpoint share one
bus (BusPool). In the simulator the EV still draws current through the sim
physics; the Modbus meter then reports whatever the external meter measures.
With `[hal] sim_meter_modbus = true` (sim only; `make run`) the process itself
serves the sim meter on the [meter] TCP endpoint and reads it back through
pymodbus (hal.modbus.sim_server.SelfServedSimMeter): the simulated EV metered
through a real Modbus stack.
The SimBoard stays reachable as board.extra["sim"] for the sim.* commands.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from chargepoint.config import ConfigError, Settings
from hal.interfaces import Board


def build_board(settings: Settings, *, monotonic: Callable[[], float] = time.monotonic) -> Board:
    options = settings.hal.options
    phases = [c.phases for c in settings.connectors]
    board: Board
    serve_sim = options.get("sim_meter_modbus", False)
    if not isinstance(serve_sim, bool) or (serve_sim and settings.hal.backend != "sim"):
        raise ConfigError("hal.sim_meter_modbus", "must be true or false, and true only with the sim backend")
    if serve_sim and all(connector.meter is None for connector in settings.connectors):
        raise ConfigError("hal.sim_meter_modbus", "needs a [meter] table (driver, host, port) to serve on")
    if settings.hal.backend == "sim":
        from hal.sim.board import DEFAULT_PERSIST_INTERVAL_S, SimBoard

        interval = options.get("persist_interval_s", DEFAULT_PERSIST_INTERVAL_S)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 <= interval <= 60:
            raise ConfigError("hal.persist_interval_s", "must be a number of seconds between 0 and 60")
        board = SimBoard(settings.storage.state_dir, connector_phases=phases, links=settings.network.links,
                         monotonic=monotonic, persist_interval_s=float(interval))
    elif settings.hal.backend == "linux":
        from hal.linux.board import build_linux_board

        board = build_linux_board(options, phases, settings.network.links)
    else:
        raise ConfigError("hal.backend", f"unknown backend {settings.hal.backend!r}")

    if all(connector.meter is None for connector in settings.connectors):
        return board
    # Imported only when a Modbus meter is configured: pymodbus costs ~20 ms and a few MB.
    from hal.modbus.meter import BusPool, ModbusMeter

    pool = BusPool()
    for index, connector in enumerate(settings.connectors):
        if connector.meter is None:
            continue
        prefix = "meter" if index == 0 else f"connector[{index}].meter"
        if serve_sim and connector.meter.transport != "tcp":
            raise ConfigError(f"{prefix}.transport", "sim_meter_modbus serves the sim meter on Modbus TCP")
        try:
            meter = ModbusMeter.from_settings(connector.meter, pool)
        except ValueError as exc:
            raise ConfigError(prefix, str(exc)) from None
        board.connectors[index].meter = meter
        if serve_sim:
            from hal.modbus.sim_server import SelfServedSimMeter
            from hal.sim.board import SimBoard

            assert isinstance(board, SimBoard)
            board.connectors[index].meter = SelfServedSimMeter(board, connector.connector_id, meter,
                                                               host=connector.meter.host, port=connector.meter.port)
    return board
