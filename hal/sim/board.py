"""The simulated charger hardware (interfaces.md §6): a first-class Board.

One SimBoard holds the physical state of every connector (the EV plugged in,
what the EVSE drives, injected faults, the meter's energy register) and hands
out the narrow drivers of hal.interfaces that read and drive it. The drivers
contain no charging logic: they only do what the EVSE controller commands and
report what the simulated physics (hal.sim.physics) says.

Time: energy is integrated lazily (on every read and before every change of
what draws power) from an injected monotonic clock.

Persistence: the hardware outlives the daemon process. Plugged EVs and their
wishes, injected faults, link states and each meter's energy register live in
state_dir/sim-hardware.json, written atomically on every command and at most
every persist_interval_s while energy increases. The meter reports its
*committed* register (the value last written), the way a real meter's register
moves in steps: so after a kill -9 the register never reads lower than a value
the daemon has already seen. The relay and the pilot output are not persisted:
real hardware powers up with the relay open and no PWM, and no energy
accumulates while the daemon is down.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hal.interfaces import (
    Board,
    ConnectorHardware,
    CpState,
    Fault,
    IdTagListener,
    MeterError,
    MeterReading,
    NetworkLinkState,
)
from hal.pilot_duty import NO_PWM_DUTY_PERCENT, duty_percent_for_current
from hal.sim import physics
from hal.sim.statefile import read_json, write_json_atomic

log = logging.getLogger("chargepoint.hal.sim")

STATE_FILE_NAME = "sim-hardware.json"
STATE_VERSION = 1
DEFAULT_PERSIST_INTERVAL_S = 2.0
DEFAULT_LINKS = ("wifi", "gsm")
ID_TAG_MAX_LEN = 20  # OCPP 1.6 IdToken is CiString20

# Faults the board's own sensing reports as they are injected. relay_weld and
# lock_failure are reported once detected (feedback disagrees with the
# command); meter_lost shows as MeterError from meter.read().
_DIRECT_FAULTS = frozenset({Fault.GROUND_FAULT, Fault.OVERCURRENT, Fault.OVER_TEMPERATURE, Fault.PILOT_FAULT})
# A tripped RCD or over-current breaker cuts the supply.
_TRIPPING_FAULTS = frozenset({Fault.GROUND_FAULT, Fault.OVERCURRENT})


@dataclass(frozen=True)
class SimChange:
    """What a sim.* command changed: the EVSE controller reacts at once instead of at its next poll."""

    kind: str                  # "plug", "unplug", "ev", "fault", "clear", "link", "swipe"
    connector_id: int | None   # None for station-wide changes (links)


SimListener = Callable[[SimChange], object]


class CommandRefused(Exception):
    """A sim.* request that cannot be carried out; the message is the reason returned to the caller."""


@dataclass
class _ConnectorState:
    connector_id: int
    supply_phases: int
    ev: physics.EvModel = field(default_factory=physics.EvModel)
    faults: set[Fault] = field(default_factory=set)       # injected
    duty_percent: float = NO_PWM_DUTY_PERCENT             # commanded PWM
    fault_signal: bool = False
    relay_commanded: bool = False
    relay_welded: bool = False
    lock_commanded: bool = False
    lock_actual: bool = False
    energy_wh: float = 0.0            # integrated, live
    committed_energy_wh: float = 0.0  # the register the meter reports (last persisted)

    @property
    def contacts_closed(self) -> bool:
        return self.relay_commanded or self.relay_welded

    @property
    def voltage_v(self) -> tuple[float, ...]:
        return (physics.SUPPLY_VOLTAGE_V,) * self.supply_phases

    def cp_state(self) -> CpState:
        return physics.cp_state(plugged=self.ev.plugged, wants_energy=self.ev.wants_energy,
                                duty_percent=self.duty_percent, fault_signal=self.fault_signal,
                                pilot_fault=Fault.PILOT_FAULT in self.faults)

    def current_a(self) -> tuple[float, ...]:
        if self.faults & _TRIPPING_FAULTS:
            return (0.0,) * self.supply_phases
        return physics.phase_currents_a(state=self.cp_state(), contacts_closed=self.contacts_closed,
                                        duty_percent=self.duty_percent, ev_max_current_a=self.ev.max_current_a,
                                        ev_phases=self.ev.phases, supply_phases=self.supply_phases)

    def power_w(self) -> float:
        return physics.power_w(self.voltage_v, self.current_a())

    def detected_faults(self) -> frozenset[Fault]:
        found = set(self.faults & _DIRECT_FAULTS)
        if self.relay_welded and not self.relay_commanded:
            found.add(Fault.RELAY_WELD)
        if self.lock_commanded != self.lock_actual:
            found.add(Fault.LOCK_FAILURE)
        return frozenset(found)


# --------------------------------------------------------------------------- drivers


class SimPilot:
    """ControlPilot: generates the duty cycle the EV model decodes."""

    def __init__(self, board: SimBoard, state: _ConnectorState) -> None:
        self._board = board
        self._s = state

    def offer_current(self, current_a: float) -> None:
        duty = duty_percent_for_current(current_a)
        if duty != self._s.duty_percent:
            self._board._change(lambda: setattr(self._s, "duty_percent", duty))

    @property
    def duty_percent(self) -> float:
        # A steady -12 V is no PWM, whatever duty is commanded underneath.
        return NO_PWM_DUTY_PERCENT if self._s.fault_signal else self._s.duty_percent

    def read_state(self) -> CpState:
        return self._s.cp_state()

    def set_fault_signal(self, on: bool) -> None:
        # Independent of the commanded duty: the controller decides what to offer after a fault.
        if on != self._s.fault_signal:
            self._board._change(lambda: setattr(self._s, "fault_signal", on))


class SimRelay:
    """Relay with mirror-contact feedback; a relay_weld fault sticks the contacts closed once they close."""

    def __init__(self, board: SimBoard, state: _ConnectorState) -> None:
        self._board = board
        self._s = state

    def set_closed(self, closed: bool) -> None:
        if closed == self._s.relay_commanded:
            return

        def apply() -> None:
            self._s.relay_commanded = closed
            if closed and Fault.RELAY_WELD in self._s.faults:
                self._s.relay_welded = True
        self._board._change(apply, persist=self._s.relay_welded or Fault.RELAY_WELD in self._s.faults)

    @property
    def commanded_closed(self) -> bool:
        return self._s.relay_commanded

    def feedback_closed(self) -> bool | None:
        return self._s.contacts_closed


class SimLock:
    def __init__(self, state: _ConnectorState) -> None:
        self._s = state

    def set_locked(self, locked: bool) -> bool:
        self._s.lock_commanded = locked
        if Fault.LOCK_FAILURE in self._s.faults:
            return self._s.lock_actual == locked
        self._s.lock_actual = locked
        return True

    def is_locked(self) -> bool:
        return self._s.lock_actual


class SimFaults:
    def __init__(self, state: _ConnectorState) -> None:
        self._s = state

    def active_faults(self) -> frozenset[Fault]:
        return self._s.detected_faults()


class SimMeter:
    """EnergyMeter over the simulated supply: 230 V per phase, the EV's currents, the committed energy register."""

    def __init__(self, board: SimBoard, state: _ConnectorState) -> None:
        self._board = board
        self._s = state

    def reading(self) -> MeterReading:
        """What the meter measures now, even when it does not answer (used by snapshots and sim servers)."""
        self._board._advance(persist=True)
        current = self._s.current_a()
        voltage = self._s.voltage_v
        return MeterReading(energy_wh=self._s.committed_energy_wh, power_w=physics.power_w(voltage, current),
                            current_a=current, voltage_v=voltage)

    async def read(self) -> MeterReading:
        reading = self.reading()
        if Fault.METER_LOST in self._s.faults:
            raise MeterError(f"simulated meter of connector {self._s.connector_id} does not answer")
        return reading

    async def close(self) -> None:
        return None


class SimProximity:
    def __init__(self, state: _ConnectorState) -> None:
        self._s = state

    def cable_rating_a(self) -> float | None:
        return self._s.ev.cable_rating_a if self._s.ev.plugged else None


class SimIdReader:
    """IdentificationReader fed by sim.swipe."""

    def __init__(self) -> None:
        self._listener: IdTagListener | None = None
        self._tasks: set[asyncio.Future[Any]] = set()

    def set_listener(self, listener: IdTagListener) -> None:
        self._listener = listener

    def present(self, id_tag: str) -> None:
        """Present a card. An async listener is scheduled on the running loop (not awaited)."""
        if self._listener is None:
            raise CommandRefused("nothing listens to the card reader yet")
        result = self._listener(id_tag)
        if inspect.isawaitable(result):
            try:
                task = asyncio.ensure_future(result)
            except RuntimeError:
                if inspect.iscoroutine(result):
                    result.close()
                raise CommandRefused("no running event loop to deliver the card to") from None
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("id tag listener failed: %r", task.exception())


class SimNetworkLinks:
    """Links in preference order; the active link is the first one up."""

    def __init__(self, names: Sequence[str]) -> None:
        self._up: dict[str, bool] = {name: True for name in names}

    def links(self) -> list[NetworkLinkState]:
        return [NetworkLinkState(name, up, metric) for metric, (name, up) in enumerate(self._up.items())]

    def active_link(self) -> str | None:
        return next((name for name, up in self._up.items() if up), None)

    def has(self, name: str) -> bool:
        return name in self._up

    def set_up(self, name: str, up: bool) -> None:
        self._up[name] = up


# --------------------------------------------------------------------------- the board


class SimBoard(Board):
    """The simulated charger: a Board plus the sim.* commands and a persisted hardware state."""

    def __init__(self, state_dir: Path | str, *, connector_phases: Sequence[int] = (3,),
                 links: Sequence[str] = DEFAULT_LINKS, monotonic: Callable[[], float] = time.monotonic,
                 persist_interval_s: float = DEFAULT_PERSIST_INTERVAL_S) -> None:
        if not connector_phases:
            raise ValueError("a board needs at least one connector")
        self.state_path = Path(state_dir) / STATE_FILE_NAME
        self._monotonic = monotonic
        self._persist_interval_s = persist_interval_s
        self._states = [_ConnectorState(i + 1, phases) for i, phases in enumerate(connector_phases)]
        self._listeners: list[SimListener] = []
        self._tasks: set[asyncio.Future[Any]] = set()
        self._persist_failed = False
        self.id_reader_sim = SimIdReader()
        self.links_sim = SimNetworkLinks(links)
        self._sim_meters = [SimMeter(self, s) for s in self._states]
        hardware = [
            ConnectorHardware(
                connector_id=s.connector_id,
                pilot=SimPilot(self, s),
                relay=SimRelay(self, s),
                lock=SimLock(s),
                faults=SimFaults(s),
                meter=meter,
                proximity=SimProximity(s),
                phases=s.supply_phases,
            )
            for s, meter in zip(self._states, self._sim_meters, strict=True)
        ]
        super().__init__(connectors=hardware, id_reader=self.id_reader_sim, network=self.links_sim)
        self.extra["sim"] = self
        self._load()
        self._last_advance_s = self._monotonic()
        self._last_persist_s = self._last_advance_s

    # ----------------------------------------------------------------- public API

    def sim_meter(self, connector_id: int) -> SimMeter:
        """The simulated meter of a connector (also when the factory fitted a Modbus meter instead)."""
        return self._sim_meters[connector_id - 1]

    def add_listener(self, callback: SimListener) -> None:
        """Call callback(SimChange) after each sim.* command that changed the hardware."""
        self._listeners.append(callback)

    def remove_listener(self, callback: SimListener) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def handle_command(self, request: dict[str, Any]) -> dict[str, Any]:
        """Carry out one control-socket sim.* request (interfaces.md §6). Never raises."""
        cmd = request.get("cmd") if isinstance(request, dict) else None
        handler = self._COMMANDS.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown sim command {cmd!r}"}
        try:
            result, change = handler(self, request)
        except CommandRefused as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug must not take the control socket down
            log.exception("sim command %s failed", cmd)
            return {"ok": False, "error": f"internal error: {exc}"}
        if change is not None:
            self._notify(change)
        return {"ok": True, "result": result}

    def snapshot(self) -> dict[str, Any]:
        """The whole simulated hardware, for status and debugging."""
        self._advance(persist=True)
        return {
            "connectors": [self._connector_snapshot(s) for s in self._states],
            "links": [{"name": link.name, "up": link.up, "metric": link.metric} for link in self.links_sim.links()],
            "active_link": self.links_sim.active_link(),
        }

    async def close(self) -> None:
        """Commit the energy registers (a clean shutdown loses nothing), then close the meters."""
        self._advance(persist=False)
        self._persist()
        await super().close()

    # ----------------------------------------------------------------- commands

    def _cmd_plug(self, req: dict[str, Any]) -> tuple[dict[str, Any], SimChange | None]:
        s = self._connector(req)
        cable = _optional_number(req, "cable_rating_a", 6.0, 80.0)
        changed = not s.ev.plugged
        if changed:
            self._change(lambda: s.ev.plug(cable), persist=True)
        return {"connector": self._connector_snapshot(s)}, SimChange("plug", s.connector_id) if changed else None

    def _cmd_unplug(self, req: dict[str, Any]) -> tuple[dict[str, Any], SimChange | None]:
        s = self._connector(req)
        changed = s.ev.plugged
        if changed:
            self._change(s.ev.unplug, persist=True)
        return {"connector": self._connector_snapshot(s)}, SimChange("unplug", s.connector_id) if changed else None

    def _cmd_ev(self, req: dict[str, Any]) -> tuple[dict[str, Any], SimChange | None]:
        s = self._connector(req)
        charge = req.get("charge")
        if charge is not None and not isinstance(charge, bool):
            raise CommandRefused("charge must be true or false")
        max_current_a = _optional_number(req, "max_current_a", 0.0, 80.0)
        phases = req.get("phases")
        if phases is not None and (isinstance(phases, bool) or phases not in (1, 2, 3)):
            raise CommandRefused("phases must be 1, 2 or 3")
        if max_current_a is not None and max_current_a <= 0:
            raise CommandRefused("max_current_a must be > 0")
        if not s.ev.plugged:
            raise CommandRefused(f"no EV plugged in on connector {s.connector_id}")

        def apply() -> None:
            if charge is not None:
                s.ev.wants_energy = charge
            if max_current_a is not None:
                s.ev.max_current_a = max_current_a
            if phases is not None:
                s.ev.phases = int(phases)
        self._change(apply, persist=True)
        return {"connector": self._connector_snapshot(s)}, SimChange("ev", s.connector_id)

    def _cmd_swipe(self, req: dict[str, Any]) -> tuple[dict[str, Any], SimChange | None]:
        id_tag = req.get("id_tag")
        if not isinstance(id_tag, str) or not id_tag or len(id_tag) > ID_TAG_MAX_LEN:
            raise CommandRefused(f"id_tag must be a string of 1 to {ID_TAG_MAX_LEN} characters")
        connector_id = self._connector(req).connector_id if "connector" in req else None
        self.id_reader_sim.present(id_tag)
        return {"id_tag": id_tag, "connector": connector_id}, SimChange("swipe", connector_id)

    def _cmd_fault(self, req: dict[str, Any]) -> tuple[dict[str, Any], SimChange | None]:
        s = self._connector(req)
        fault = _fault_kind(req)
        if fault is None:
            raise CommandRefused("kind is required")

        def apply() -> None:
            s.faults.add(fault)
            if fault is Fault.RELAY_WELD and s.relay_commanded:
                s.relay_welded = True
        self._change(apply, persist=True)
        return {"connector": self._connector_snapshot(s)}, SimChange("fault", s.connector_id)

    def _cmd_clear(self, req: dict[str, Any]) -> tuple[dict[str, Any], SimChange | None]:
        s = self._connector(req)
        only = _fault_kind(req)

        def apply() -> None:
            cleared = {only} if only is not None else set(s.faults)
            s.faults -= cleared
            if Fault.RELAY_WELD in cleared:
                s.relay_welded = False
            if Fault.LOCK_FAILURE in cleared:
                # The repaired actuator completes the pending command.
                s.lock_actual = s.lock_commanded
        self._change(apply, persist=True)
        return {"connector": self._connector_snapshot(s)}, SimChange("clear", s.connector_id)

    def _cmd_link(self, req: dict[str, Any]) -> tuple[dict[str, Any], SimChange | None]:
        name = req.get("name")
        up = req.get("up")
        if not isinstance(name, str) or not self.links_sim.has(name):
            known = ", ".join(link.name for link in self.links_sim.links())
            raise CommandRefused(f"unknown link {name!r} (known: {known})")
        if not isinstance(up, bool):
            raise CommandRefused("up must be true or false")
        self.links_sim.set_up(name, up)
        self._persist()
        result = {"links": [{"name": link.name, "up": link.up} for link in self.links_sim.links()],
                  "active_link": self.links_sim.active_link()}
        return result, SimChange("link", None)

    def _cmd_state(self, req: dict[str, Any]) -> tuple[dict[str, Any], SimChange | None]:
        return self.snapshot(), None

    _COMMANDS: ClassVar[dict[str, Callable[[SimBoard, dict[str, Any]], tuple[dict[str, Any], SimChange | None]]]] = {
        "sim.plug": _cmd_plug,
        "sim.unplug": _cmd_unplug,
        "sim.ev": _cmd_ev,
        "sim.swipe": _cmd_swipe,
        "sim.fault": _cmd_fault,
        "sim.clear": _cmd_clear,
        "sim.link": _cmd_link,
        "sim.state": _cmd_state,  # addition: the whole simulated hardware
    }

    # ----------------------------------------------------------------- internals

    def _connector(self, req: dict[str, Any]) -> _ConnectorState:
        cid = req.get("connector")
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise CommandRefused("connector must be a connector id (an integer)")
        if not 1 <= cid <= len(self._states):
            raise CommandRefused(f"unknown connector {cid} (this board has 1..{len(self._states)})")
        return self._states[cid - 1]

    def _advance(self, *, persist: bool) -> None:
        """Integrate energy up to now at the power that has flowed since the last change."""
        now_s = self._monotonic()
        elapsed_s = now_s - self._last_advance_s
        if elapsed_s > 0:
            for s in self._states:
                s.energy_wh += physics.energy_increment_wh(s.power_w(), elapsed_s)
            self._last_advance_s = now_s
        if persist and now_s - self._last_persist_s >= self._persist_interval_s and self._energy_moved():
            self._persist()

    def _energy_moved(self) -> bool:
        return any(s.energy_wh != s.committed_energy_wh for s in self._states)

    def _change(self, apply: Callable[[], None], *, persist: bool = False) -> None:
        """Apply a change to what draws power: integrate first, so the old power counts up to now."""
        before = [s.power_w() for s in self._states]
        self._advance(persist=False)
        apply()
        power_changed = before != [s.power_w() for s in self._states]
        # Commit when the power changes, so a register read after the relay opens is exact.
        if persist or (power_changed and self._energy_moved()):
            self._persist()

    def _persist(self) -> None:
        for s in self._states:
            s.committed_energy_wh = s.energy_wh
        self._last_persist_s = self._monotonic()
        try:
            write_json_atomic(self.state_path, self._to_json())
        except OSError as exc:
            if not self._persist_failed:
                log.error("cannot persist sim hardware state to %s: %s", self.state_path, exc)
            self._persist_failed = True
        else:
            self._persist_failed = False

    def _to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "connectors": {
                str(s.connector_id): {
                    "plugged": s.ev.plugged,
                    "wants_energy": s.ev.wants_energy,
                    "ev_max_current_a": s.ev.max_current_a,
                    "ev_phases": s.ev.phases,
                    "cable_rating_a": s.ev.cable_rating_a,
                    "faults": sorted(f.value for f in s.faults),
                    "relay_welded": s.relay_welded,
                    "energy_wh": s.committed_energy_wh,
                }
                for s in self._states
            },
            "links": {link.name: link.up for link in self.links_sim.links()},
        }

    def _load(self) -> None:
        data = read_json(self.state_path)
        if data is None:
            return
        connectors = data.get("connectors")
        for s in self._states:
            raw = connectors.get(str(s.connector_id)) if isinstance(connectors, dict) else None
            if not isinstance(raw, dict):
                continue
            try:
                _load_connector(s, raw)
            except (TypeError, ValueError) as exc:
                log.warning("sim hardware state of connector %d ignored: %s", s.connector_id, exc)
        links = data.get("links")
        if isinstance(links, dict):
            for name, up in links.items():
                if self.links_sim.has(name) and isinstance(up, bool):
                    self.links_sim.set_up(name, up)
        log.info("sim hardware restored from %s", self.state_path)

    def _connector_snapshot(self, s: _ConnectorState) -> dict[str, Any]:
        current = s.current_a()
        return {
            "id": s.connector_id,
            "plugged": s.ev.plugged,
            "ev": {"wants_energy": s.ev.wants_energy, "max_current_a": s.ev.max_current_a,
                   "phases": s.ev.phases, "cable_rating_a": s.ev.cable_rating_a} if s.ev.plugged else None,
            "cp_state": s.cp_state().value,
            "pilot_duty_percent": NO_PWM_DUTY_PERCENT if s.fault_signal else s.duty_percent,
            "fault_signal": s.fault_signal,
            "relay_commanded_closed": s.relay_commanded,
            "relay_contacts_closed": s.contacts_closed,
            "locked": s.lock_actual,
            "injected_faults": sorted(f.value for f in s.faults),
            "active_faults": sorted(f.value for f in s.detected_faults()),
            "meter": {"energy_wh": s.committed_energy_wh, "power_w": physics.power_w(s.voltage_v, current),
                      "current_a": list(current), "voltage_v": list(s.voltage_v)},
        }

    def _notify(self, change: SimChange) -> None:
        for callback in list(self._listeners):
            try:
                result = callback(change)
                if inspect.iscoroutine(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            except Exception:
                log.exception("sim change listener failed")


def _load_connector(s: _ConnectorState, raw: dict[str, Any]) -> None:
    """Restore one connector; validates everything before changing anything."""
    energy_wh = float(raw.get("energy_wh", 0.0))
    if not math.isfinite(energy_wh) or energy_wh < 0:
        raise ValueError(f"bad energy register {energy_wh!r}")
    ev_phases = int(raw.get("ev_phases", physics.DEFAULT_EV_PHASES))
    if ev_phases not in (1, 2, 3):
        raise ValueError(f"bad EV phases {ev_phases!r}")
    ev_max_current_a = float(raw.get("ev_max_current_a", physics.DEFAULT_EV_MAX_CURRENT_A))
    cable = raw.get("cable_rating_a")
    cable_rating_a = float(cable) if cable is not None else None
    faults = {Fault(kind) for kind in raw.get("faults", [])}
    s.energy_wh = s.committed_energy_wh = energy_wh
    s.ev.plugged = bool(raw.get("plugged", False))
    s.ev.wants_energy = bool(raw.get("wants_energy", True))
    s.ev.max_current_a = ev_max_current_a
    s.ev.phases = ev_phases
    s.ev.cable_rating_a = cable_rating_a
    s.faults = faults
    s.relay_welded = bool(raw.get("relay_welded", False))


def _optional_number(req: dict[str, Any], key: str, minimum: float, maximum: float) -> float | None:
    value = req.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CommandRefused(f"{key} must be a number")
    if not minimum <= value <= maximum:
        raise CommandRefused(f"{key} must be between {minimum:g} and {maximum:g}")
    return float(value)


def _fault_kind(req: dict[str, Any]) -> Fault | None:
    kind = req.get("kind")
    if kind is None:
        return None
    try:
        return Fault(kind)
    except ValueError:
        known = ", ".join(f.value for f in Fault)
        raise CommandRefused(f"unknown fault kind {kind!r} (known: {known})") from None
