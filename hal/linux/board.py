"""The real-hardware backend (`[hal] backend = "linux"`): sysfs PWM, GPIO and IIO.

A skeleton for a typical Linux EVSE board, kept small: the pilot's 1 kHz PWM
on a PWM channel (100 % = steady +12 V, 0 % = steady -12 V for state F), the
CP high level from an ADC channel, the contactor, lock and fault inputs on
legacy sysfs GPIO lines, network links from /sys/class/net. No charging logic:
the EVSE controller decides, these drivers only act and report.

Configuration, inside the [hal] table (every path is taken under sysfs_root):

    [hal]
    backend = "linux"
    sysfs_root = "/"
    network_interfaces = { wifi = "wlan0", gsm = "ppp0" }
    rfid_device = "/dev/input/by-id/usb-XXXX-event-kbd"   # optional: no card reader without it
    rfid_grab = true                   # optional: exclusive access (EVIOCGRAB), best effort

    [[hal.connector]]                  # one per [[connector]], same order
    pwm_chip = 0
    pwm_channel = 0
    cp_adc = "/sys/bus/iio/devices/iio:device0/in_voltage0_raw"
    cp_adc_scale_v = 0.01              # CP volts per ADC count
    cp_adc_offset_v = -12.0
    relay_gpio = 17
    relay_feedback_gpio = 27           # optional (mirror contact)
    lock_gpio = 22                     # optional (no lock: tethered cable)
    lock_feedback_gpio = 23            # optional
    fault_gpios = { ground_fault = 5, overcurrent = 6 }   # optional, active high
    active_low_gpios = [27]            # optional: lines whose active level is 0
    pp_adc = "/sys/bus/iio/devices/iio:device0/in_voltage1_raw"   # optional (tethered: none)
    pp_adc_scale_v = 0.000805          # PP volts per ADC count (offset: pp_adc_offset_v, 0)
    pp_pullup_ohm = 1000.0             # with pp_adc: the divider's pull-up to pp_supply_v
    pp_supply_v = 3.3

The card reader (hal.linux.evdev) is a USB "keyboard wedge" RFID reader: its
evdev device under /dev/input/by-id/ (stable across reboots and USB ports); a
card is its UID typed as digits, passed on as typed. The device may come and go:
it is reopened every 5 s while missing.

The proximity pilot (hal.linux.proximity) reads the PP resistor of a socket-outlet
through the ADC behind a pull-up: Rc = pp_pullup_ohm * V / (pp_supply_v - V),
decoded per IEC 61851-1 Annex B (13, 20, 32, 63 A). Open, short or unreadable:
0 A (no valid cable, no current).

The energy meter is a Modbus meter from the connector's [meter] table
(fitted by hal.factory); without one, meter.read() raises MeterError.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chargepoint.config import ConfigError
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
from hal.linux.evdev import EvdevIdReader
from hal.linux.proximity import LinuxProximity
from hal.linux.sysfs import Adc, Gpio, PwmChannel, SysfsError, under
from hal.pilot_duty import NO_PWM_DUTY_PERCENT, duty_percent_for_current

log = logging.getLogger("chargepoint.hal.linux")

# Lower bounds of the CP high level per state (IEC 61851-1 Annex A: A 12 V, B 9 V,
# C 6 V, D 3 V, E 0 V, F -12 V, each +-1 V): the midpoints between nominal levels.
DEFAULT_CP_THRESHOLDS_V = (10.5, 7.5, 4.5, 1.5, -6.0)
_CP_ORDER = (CpState.A, CpState.B, CpState.C, CpState.D, CpState.E)


def classify_cp_v(high_v: float, thresholds_v: Sequence[float] = DEFAULT_CP_THRESHOLDS_V) -> CpState:
    """The CP state for a measured high level (pure)."""
    for state, lower_v in zip(_CP_ORDER, thresholds_v, strict=True):
        if high_v >= lower_v:
            return state
    return CpState.F


class LinuxPilot:
    def __init__(self, pwm: PwmChannel, adc: Adc, thresholds_v: Sequence[float]) -> None:
        self._pwm = pwm
        self._adc = adc
        self._thresholds_v = tuple(thresholds_v)
        self._duty_percent = NO_PWM_DUTY_PERCENT
        self._fault_signal = False
        self._apply()

    def _apply(self) -> None:
        # Steady low (0 %) drives -12 V: state F. 100 % is steady +12 V: no current offered.
        duty = 0.0 if self._fault_signal else self._duty_percent
        try:
            self._pwm.set_duty_ns(round(self._pwm.period_ns * duty / 100.0))
        except SysfsError as exc:
            log.error("pilot PWM: %s", exc)

    def offer_current(self, current_a: float) -> None:
        self._duty_percent = duty_percent_for_current(current_a)
        self._apply()

    @property
    def duty_percent(self) -> float:
        return NO_PWM_DUTY_PERCENT if self._fault_signal else self._duty_percent

    def read_state(self) -> CpState:
        try:
            return classify_cp_v(self._adc.read_v(), self._thresholds_v)
        except SysfsError as exc:
            # An unreadable pilot is treated as a pilot error: no energy without a known CP state.
            log.error("pilot ADC: %s", exc)
            return CpState.E

    def set_fault_signal(self, on: bool) -> None:
        self._fault_signal = on
        self._apply()


class LinuxRelay:
    def __init__(self, out: Gpio, feedback: Gpio | None) -> None:
        self._out = out
        self._feedback = feedback
        self._commanded = False
        self.set_closed(False)

    def set_closed(self, closed: bool) -> None:
        self._commanded = closed
        try:
            self._out.write(closed)
        except SysfsError as exc:
            log.error("relay: %s", exc)

    @property
    def commanded_closed(self) -> bool:
        return self._commanded

    def feedback_closed(self) -> bool | None:
        if self._feedback is None:
            return None
        try:
            return self._feedback.read()
        except SysfsError as exc:
            log.error("relay feedback: %s", exc)
            return None


class LinuxLock:
    """Connector lock; without a lock line (tethered cable) it reports the commanded state."""

    def __init__(self, out: Gpio | None, feedback: Gpio | None) -> None:
        self._out = out
        self._feedback = feedback
        self.commanded_locked = False

    def set_locked(self, locked: bool) -> bool:
        self.commanded_locked = locked
        if self._out is not None:
            try:
                self._out.write(locked)
            except SysfsError as exc:
                log.error("lock: %s", exc)
                return False
        # The feedback is read at once: an actuator slower than that reports a failure the
        # controller may retry (a sync interface cannot wait for a motor).
        return self.is_locked() == locked

    def is_locked(self) -> bool:
        if self._feedback is None:
            return self.commanded_locked
        try:
            return self._feedback.read()
        except SysfsError as exc:
            log.error("lock feedback: %s", exc)
            return not self.commanded_locked


class LinuxFaults:
    """Fault input lines, plus welded-relay and lock mismatches seen on the feedback lines."""

    def __init__(self, inputs: Mapping[Fault, Gpio], relay: LinuxRelay, lock: LinuxLock) -> None:
        self._inputs = dict(inputs)
        self._relay = relay
        self._lock = lock

    def active_faults(self) -> frozenset[Fault]:
        found: set[Fault] = set()
        for fault, line in self._inputs.items():
            try:
                if line.read():
                    found.add(fault)
            except SysfsError as exc:
                log.error("fault input %s: %s", fault.value, exc)
                found.add(fault)  # an unreadable protection input is not a healthy one
        if not self._relay.commanded_closed and self._relay.feedback_closed():
            found.add(Fault.RELAY_WELD)
        if self._lock.is_locked() != self._lock.commanded_locked:
            found.add(Fault.LOCK_FAILURE)
        return frozenset(found)


class NoMeter:
    """Placeholder until hal.factory fits the connector's Modbus meter."""

    def __init__(self, connector_id: int) -> None:
        self._connector_id = connector_id

    async def read(self) -> MeterReading:
        raise MeterError(f"connector {self._connector_id} has no energy meter configured ([meter] table)")

    async def close(self) -> None:
        return None


class NoIdReader:
    """No card reader configured ([hal] rfid_device): cards never arrive."""

    def set_listener(self, listener: IdTagListener) -> None:
        self._listener = listener


class SysfsNetworkLinks:
    """Link state from /sys/class/net/<interface>/operstate, in configured preference order."""

    def __init__(self, root: Path, names: Sequence[str], interfaces: Mapping[str, str]) -> None:
        self._root = root
        self._interfaces = [(name, interfaces.get(name, name)) for name in names]

    def _up(self, interface: str) -> bool:
        path = under(self._root, f"/sys/class/net/{interface}/operstate")
        try:
            state = path.read_text().strip()
        except OSError:
            return False  # a PPP/modem interface only exists while it is connected
        # Point-to-point links (ppp, wwan) report "unknown" while they carry traffic.
        return state in ("up", "unknown")

    def links(self) -> list[NetworkLinkState]:
        return [NetworkLinkState(name, self._up(iface), metric)
                for metric, (name, iface) in enumerate(self._interfaces)]

    def active_link(self) -> str | None:
        return next((name for name, iface in self._interfaces if self._up(iface)), None)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class _Opt:
    table: Mapping[str, Any]
    prefix: str

    def integer(self, key: str, *, required: bool = True) -> int | None:
        value = self.table.get(key)
        if value is None:
            if required:
                raise ConfigError(f"{self.prefix}.{key}", "missing")
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{self.prefix}.{key}", "must be a non-negative integer")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self.prefix}.{key}", "must be a number")
        return float(value)

    def positive(self, key: str) -> float:
        value = self.table.get(key)
        if value is None:
            raise ConfigError(f"{self.prefix}.{key}", "missing")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{self.prefix}.{key}", "must be a positive number")
        return float(value)

    def path(self, key: str) -> str:
        value = self.table.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.prefix}.{key}", "missing (a path)")
        return value


def build_linux_board(options: Mapping[str, Any], connector_phases: Sequence[int],
                      links: Sequence[str]) -> Board:
    """A Board from the [hal] options (see the module docstring). Raises ConfigError naming the key."""
    root = Path(str(options.get("sysfs_root", "/")))
    tables = options.get("connector")
    if not isinstance(tables, list) or len(tables) != len(connector_phases):
        raise ConfigError("hal.connector", f"needs one [[hal.connector]] table per connector "
                                           f"({len(connector_phases)})")
    interfaces = options.get("network_interfaces", {})
    if not isinstance(interfaces, dict) or not all(isinstance(v, str) for v in interfaces.values()):
        raise ConfigError("hal.network_interfaces", "must be a table of link name = interface name")
    connectors = []
    for index, (table, phases) in enumerate(zip(tables, connector_phases, strict=True)):
        prefix = f"hal.connector[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(prefix, "must be a table")
        try:
            connectors.append(_build_connector(root, _Opt(table, prefix), index + 1, phases))
        except SysfsError as exc:
            raise ConfigError(prefix, str(exc)) from None
    return LinuxBoard(connectors=connectors, id_reader=_build_id_reader(root, options),
                      network=SysfsNetworkLinks(root, links, interfaces))


class LinuxBoard(Board):
    async def close(self) -> None:
        if isinstance(self.id_reader, EvdevIdReader):
            await self.id_reader.close()
        await super().close()


def _build_id_reader(root: Path, options: Mapping[str, Any]) -> EvdevIdReader | NoIdReader:
    device = options.get("rfid_device")
    grab = options.get("rfid_grab", True)
    if not isinstance(grab, bool):
        raise ConfigError("hal.rfid_grab", "must be true or false")
    if device is None:
        return NoIdReader()
    if not isinstance(device, str) or not device:
        raise ConfigError("hal.rfid_device", "must be the path of the reader's input device "
                                             "(/dev/input/by-id/...-event-kbd)")
    # Not checked for existence here: a USB reader may be plugged in later (the driver retries).
    return EvdevIdReader(str(under(root, device)), grab=grab)


def _build_connector(root: Path, opt: _Opt, connector_id: int, phases: int) -> ConnectorHardware:
    active_low = set(opt.table.get("active_low_gpios", []))

    def gpio(key: str, *, output: bool, required: bool = False) -> Gpio | None:
        number = opt.integer(key, required=required)
        return None if number is None else Gpio(root, number, output=output, active_low=number in active_low)

    thresholds = opt.table.get("cp_thresholds_v", DEFAULT_CP_THRESHOLDS_V)
    if (not isinstance(thresholds, (list, tuple)) or len(thresholds) != len(_CP_ORDER)
            or list(thresholds) != sorted(thresholds, reverse=True)):
        raise ConfigError(f"{opt.prefix}.cp_thresholds_v", "five descending levels: lower bounds of A, B, C, D, E")
    pwm = PwmChannel(root, opt.integer("pwm_chip") or 0, opt.integer("pwm_channel") or 0)
    adc = Adc(under(root, opt.path("cp_adc")), opt.number("cp_adc_scale_v", 1.0), opt.number("cp_adc_offset_v", 0.0))
    relay_out = gpio("relay_gpio", output=True, required=True)
    assert relay_out is not None
    relay = LinuxRelay(relay_out, gpio("relay_feedback_gpio", output=False))
    lock = LinuxLock(gpio("lock_gpio", output=True), gpio("lock_feedback_gpio", output=False))
    fault_table = opt.table.get("fault_gpios", {})
    if not isinstance(fault_table, dict):
        raise ConfigError(f"{opt.prefix}.fault_gpios", "must be a table of fault kind = GPIO number")
    inputs: dict[Fault, Gpio] = {}
    fault_opt = _Opt(fault_table, f"{opt.prefix}.fault_gpios")
    for kind in fault_table:
        try:
            fault = Fault(kind)
        except ValueError:
            raise ConfigError(f"{opt.prefix}.fault_gpios.{kind}", "unknown fault kind") from None
        line = gpio_from(root, fault_opt, kind, active_low)
        inputs[fault] = line
    return ConnectorHardware(
        connector_id=connector_id,
        pilot=LinuxPilot(pwm, adc, thresholds),
        relay=relay,
        lock=lock,
        faults=LinuxFaults(inputs, relay, lock),
        meter=NoMeter(connector_id),
        proximity=_build_proximity(root, opt, connector_id),
        phases=phases,
    )


def _build_proximity(root: Path, opt: _Opt, connector_id: int) -> LinuxProximity | None:
    if opt.table.get("pp_adc") is None:
        return None   # tethered cable: no PP to read, the connector's max_current_a is the cable's
    adc = Adc(under(root, opt.path("pp_adc")), opt.number("pp_adc_scale_v", 1.0), opt.number("pp_adc_offset_v", 0.0))
    return LinuxProximity(adc, pullup_ohm=opt.positive("pp_pullup_ohm"), supply_v=opt.positive("pp_supply_v"),
                          connector_id=connector_id)


def gpio_from(root: Path, opt: _Opt, key: str, active_low: set[int]) -> Gpio:
    number = opt.integer(key)
    assert number is not None
    return Gpio(root, number, output=False, active_low=number in active_low)
