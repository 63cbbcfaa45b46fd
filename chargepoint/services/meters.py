"""Polls each connector's energy meter: the one owner of the latest reading.

Every consumer (transactions for meterStart/meterStop, metering for MeterValues,
the connector controller for Charging vs SuspendedEV, `status`) reads the cached
reading from here instead of touching the bus. A meter that stops answering is
reported (PowerMeterFailure via the controller), never crashed on; readings
resume when it answers again.

Cadence: every POLL_INTERVAL_S while a connector is in use (an EV plugged, the contactor
closed, a transaction); every IDLE_POLL_INTERVAL_S while it is idle (the register cannot
move with the contactor open; the reading stays fresh enough for `status`, and a meter
lost while idle is reported within LOST_AFTER_FAILURES idle polls). A plug-in reads at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import TYPE_CHECKING, Any

from chargepoint.evse.controller import ConnectorEvent, Plugged
from hal.interfaces import MeterError, MeterReading

if TYPE_CHECKING:
    from chargepoint.app import ChargePointApp

log = logging.getLogger("chargepoint.meter")

POLL_INTERVAL_S = 1.0
IDLE_POLL_INTERVAL_S = 5.0
# A meter that fails this many polls in a row is "lost" (each poll already retried in the driver).
LOST_AFTER_FAILURES = 3


class MeterService:
    def __init__(self, app: ChargePointApp, *, poll_interval_s: float = POLL_INTERVAL_S,
                 idle_poll_interval_s: float = IDLE_POLL_INTERVAL_S) -> None:
        self.app = app
        self.poll_interval_s = poll_interval_s
        self.idle_poll_interval_s = max(poll_interval_s, idle_poll_interval_s)
        self._wake = asyncio.Event()
        self._latest: dict[int, MeterReading] = {}
        self._read_at_s: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._errors: dict[int, str | None] = {}
        self._locks = {cid: asyncio.Lock() for cid in app.controllers}
        app.add_connector_status_contributor(self._contribute)
        app.add_connector_listener(self._on_connector_event)

    def latest(self, connector_id: int) -> MeterReading | None:
        return self._latest.get(connector_id)

    def read_at_s(self, connector_id: int) -> float | None:
        """Monotonic time of the cached reading (None: never read)."""
        return self._read_at_s.get(connector_id)

    def error(self, connector_id: int) -> str | None:
        return self._errors.get(connector_id)

    async def read_now(self, connector_id: int) -> MeterReading | None:
        """A fresh reading (for meterStart/meterStop); the cached one if the meter fails."""
        async with self._locks[connector_id]:
            meter = self.app.board.connector(connector_id).meter
            try:
                reading = await meter.read()
            except MeterError as exc:
                self._failed(connector_id, exc)
                return self._latest.get(connector_id)
            except Exception as exc:  # a driver bug must not take the charger down
                log.exception("connector %d: meter driver error", connector_id)
                self._failed(connector_id, exc)
                return self._latest.get(connector_id)
            if not all(math.isfinite(x) for x in (reading.energy_wh, reading.power_w, *reading.current_a,
                                                      *reading.voltage_v)) or reading.energy_wh < 0:
                # A driver that decodes garbage (NaN, negative register) is a failing meter,
                # never a value to bill or report.
                self._failed(connector_id, MeterError(f"implausible reading {reading}"))
                return self._latest.get(connector_id)
            self._ok(connector_id, reading)
            return reading

    def _ok(self, connector_id: int, reading: MeterReading) -> None:
        if self._failures.get(connector_id, 0) >= LOST_AFTER_FAILURES:
            log.info("connector %d: meter answers again", connector_id)
        self._failures[connector_id] = 0
        self._errors[connector_id] = None
        self._latest[connector_id] = reading
        self._read_at_s[connector_id] = self.app.clock.monotonic_s()
        controller = self.app.controllers[connector_id]
        controller.set_meter_lost(False)
        controller.set_power_w(reading.power_w)

    def _failed(self, connector_id: int, exc: Exception) -> None:
        failures = self._failures.get(connector_id, 0) + 1
        self._failures[connector_id] = failures
        self._errors[connector_id] = str(exc) or type(exc).__name__
        if failures == LOST_AFTER_FAILURES:
            log.error("connector %d: meter lost (%s)", connector_id, self._errors[connector_id])
            controller = self.app.controllers[connector_id]
            controller.set_meter_lost(True)
            controller.set_power_w(None)

    def _in_use(self, connector_id: int) -> bool:
        transactions = self.app.transactions
        return bool(self.app.controllers[connector_id].plugged
                    or self.app.board.connector(connector_id).relay.commanded_closed
                    or (transactions is not None and transactions.active(connector_id) is not None))

    def _on_connector_event(self, event: ConnectorEvent) -> None:
        if isinstance(event, Plugged):
            self._wake.set()   # read at once, then at the fast cadence

    async def run(self) -> None:
        due_s: dict[int, float] = {}
        while True:
            self._wake.clear()
            now_s = self.app.clock.monotonic_s()
            for connector_id in self.app.controllers:
                if now_s >= due_s.get(connector_id, 0.0) or self._in_use(connector_id):
                    await self.read_now(connector_id)
                    interval_s = self.poll_interval_s if self._in_use(connector_id) else self.idle_poll_interval_s
                    due_s[connector_id] = self.app.clock.monotonic_s() + interval_s
            wait_s = max(0.0, min(due_s.values(), default=now_s + self.poll_interval_s) - self.app.clock.monotonic_s())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()

    def _contribute(self, connector_id: int, entry: dict[str, Any]) -> None:
        reading = self._latest.get(connector_id)
        if reading is not None:
            entry["meter"] = {
                "energy_wh": round(reading.energy_wh, 1),
                "power_w": round(reading.power_w, 1),
                "current_a": [round(x, 2) for x in reading.current_a],
                "voltage_v": [round(x, 1) for x in reading.voltage_v],
            }
        error = self._errors.get(connector_id)
        if error and self._failures.get(connector_id, 0) >= LOST_AFTER_FAILURES:
            entry["meter_error"] = error
