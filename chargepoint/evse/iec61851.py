"""IEC 61851-1 control-pilot logic as pure functions: decide first, then act.

Nothing here reads a clock or touches hardware. `decide()` maps the facts of one
instant to the outputs the connector should have; `step()` adds the two rules
that need time (rate-limited raises of the offered current, and a short grace
before opening the contactor under load), with time passed in as `now_s`.
The connector controller (chargepoint.evse.controller) reads the HAL, calls
`step()`, and applies the result.

Sources: IEC 61851-1 Annex A (pilot states, duty cycle <-> current), IEC 61851-1
Annex B / IEC 62196 (proximity resistor coding), field-notes section 4.
"""

from __future__ import annotations

from dataclasses import dataclass

from hal.faults import FAULT_TABLE, FaultReport
from hal.interfaces import CpState, Fault
from hal.pilot_duty import MAX_CURRENT_A, MIN_CURRENT_A, NO_PWM_DUTY_PERCENT, duty_percent_for_current

# IEC 61851-1 Annex A: the lowest current a PWM can offer is 6 A (10 % duty);
# below that the EVSE pauses with a steady +12 V / +9 V (100 % duty, no PWM).
# 96 % duty = 80 A is the top of the mapping; anything above is clamped. The encoder
# (current -> duty) is the drivers' own table, one implementation for all of them.
MAX_PWM_CURRENT_A = MAX_CURRENT_A
_LOW_RANGE_TOP_DUTY = 85.0
_MAX_DUTY = 96.0

PLUGGED_STATES = frozenset({CpState.B, CpState.C, CpState.D})
# States in which the EV asks for energy (S2 closed). D = with ventilation.
ENERGY_REQUEST_STATES = frozenset({CpState.C, CpState.D})


# --------------------------------------------------------------------------- duty cycle


def current_for_duty_percent(duty_percent: float) -> float:
    """The current an EV reads from a duty cycle (IEC 61851-1 Annex A, table A.7).

    The exact inverse of duty_percent_for_current, for reasoning about what the EV is
    offered. hal.pilot_duty.current_for_duty is the simulated car's reading, quantized
    to 0.01 A like a real PWM decoder; the two differ on purpose.

    10..85 %: duty x 0.6; 85..96 %: (duty - 64) x 2.5; 8..10 % reads as 6 A and
    96..97 % as 80 A (tolerance bands); anything else (no PWM, < 8 %, > 97 %)
    offers no current: 0.0.
    """
    if 8.0 <= duty_percent < 10.0:
        return MIN_CURRENT_A
    if 10.0 <= duty_percent <= _LOW_RANGE_TOP_DUTY:
        return duty_percent * 0.6
    if _LOW_RANGE_TOP_DUTY < duty_percent <= _MAX_DUTY:
        return (duty_percent - 64.0) * 2.5
    if _MAX_DUTY < duty_percent <= 97.0:
        return MAX_PWM_CURRENT_A
    return 0.0


def offered_current_a(connector_max_a: float, cable_rating_a: float | None = None,
                      limit_a: float | None = None, station_limit_a: float | None = None) -> float:
    """The current to offer: min of the limits present (field-notes 4); < 6 A -> 0 (pause)."""
    current_a = min(x for x in (connector_max_a, cable_rating_a, limit_a, station_limit_a) if x is not None)
    if not current_a >= MIN_CURRENT_A:   # also catches NaN
        return 0.0
    return min(current_a, MAX_PWM_CURRENT_A)


# --------------------------------------------------------------------------- faults

# What each fault means for charging lives in one table, hal.faults.FAULT_TABLE
# (stops_charging, faulted, error code). Here: a fault that stops charging and
# makes the connector Faulted also drives F (-12 V: EVSE not available). A
# pilot fault (E, diode check) stops energy but does not drive F, so that the
# EV's recovery stays visible on the pilot.


def stopping_faults(faults: frozenset[Fault]) -> frozenset[Fault]:
    return frozenset(f for f in faults if _report(f).stops_charging)


def signals_f(fault: Fault) -> bool:
    report = _report(fault)
    return report.stops_charging and report.faulted


def _report(fault: Fault) -> FaultReport:
    # A Fault kind added to hal.interfaces before hal.faults knows it: stop and signal.
    return FAULT_TABLE.get(fault, _UNKNOWN_FAULT)


_UNKNOWN_FAULT = FaultReport("InternalError", True, True, "HW-??", "unknown hardware fault")


# --------------------------------------------------------------------------- decide


@dataclass(frozen=True)
class Inputs:
    """The facts of one instant."""

    cp_state: CpState
    faults: frozenset[Fault] = frozenset()
    energy_allowed: bool = False          # a transaction is authorized and running, or free vend
    available: bool = True                # ChangeAvailability (Operative)
    limit_a: float | None = None          # smart charging (composite schedule) limit
    connector_max_a: float = 32.0
    cable_rating_a: float | None = None   # from the proximity pilot; None: tethered / not fitted
    station_limit_a: float | None = None  # ChargePointMaxProfile share, site limit
    ventilation_available: bool = True    # False: state D (ventilation required) is not served
    # A session still owns the cable although the EV side is gone: OCPP 1.6 §4.10 (locked
    # while StopTransactionOnEVSideDisconnect is false; UnlockConnectorOnEVSideDisconnect
    # false) and errata 3.5 (after a DeAuthorized stop, until the same idTag is presented).
    lock_held: bool = False


@dataclass(frozen=True)
class Outputs:
    offer_current_a: float   # 0 = no PWM (100 % duty)
    relay_closed: bool
    fault_signal: bool       # drive -12 V (state F)
    lock: bool

    @property
    def duty_percent(self) -> float:
        return duty_percent_for_current(self.offer_current_a)


def decide(inputs: Inputs) -> Outputs:
    """The outputs for these facts, ignoring time (see `step` for the timed rules).

    - PWM: offered only when an EV is plugged (B/C/D), energy is allowed, the
      connector is available, no fault stops energy and the min of all limits is
      at least 6 A (IEC 61851-1 Annex A: below 6 A pause, never < 10 % duty).
    - Contactor: closed only in C (or D with ventilation) while the PWM is on.
      Open in A (no EV), B (IEC 61851-1 A.3: the EVSE opens the contactor when
      the EV returns to B, e.g. a pause or a full battery), E, F and on any
      stopping fault.
    - F (-12 V): while a board fault says so, or while Unavailable
      (hal.interfaces.ControlPilot.set_fault_signal).
    - Lock: while an EV is connected (any state but A) and energy is allowed
      (the session owns the cable), and always while a welded contactor may
      keep the socket live. Unlocked when no session holds it, so the driver
      can take the cable after StopTransaction or a fault; held regardless of the
      pilot while `lock_held` (the EV side was unplugged, the cable stays in the socket).
    """
    stopping = stopping_faults(inputs.faults)
    signal_f = any(signals_f(f) for f in stopping) or not inputs.available
    plugged = inputs.cp_state in PLUGGED_STATES

    offer_a = 0.0
    if plugged and inputs.energy_allowed and inputs.available and not stopping:
        offer_a = offered_current_a(inputs.connector_max_a, inputs.cable_rating_a,
                                    inputs.limit_a, inputs.station_limit_a)
    wants_energy = inputs.cp_state == CpState.C or (
        inputs.cp_state == CpState.D and inputs.ventilation_available)
    relay_closed = wants_energy and offer_a >= MIN_CURRENT_A and inputs.energy_allowed and not stopping

    connected = inputs.cp_state != CpState.A
    lock = (connected and (inputs.energy_allowed or Fault.RELAY_WELD in inputs.faults)) or inputs.lock_held
    return Outputs(offer_current_a=offer_a, relay_closed=relay_closed, fault_signal=signal_f, lock=lock)


# --------------------------------------------------------------------------- step (timed rules)


@dataclass(frozen=True)
class Timing:
    # Raises of the offered current are rate-limited (protects the car and the
    # grid from flapping limits; field-notes 4: "at most every 5 s"); lowering is
    # never delayed.
    raise_min_interval_s: float = 5.0
    # IEC 61851-1 Annex A (sequence C2 -> C1/B): after the PWM is withdrawn the
    # EV must stop drawing and return to B; the EVSE opens the contactor when it
    # does, or after this grace at the latest (to avoid breaking under load).
    relay_open_grace_s: float = 3.0


@dataclass(frozen=True)
class Memory:
    """What `step` remembers between calls: the outputs now applied and when."""

    offer_current_a: float = 0.0
    relay_closed: bool = False
    last_raise_s: float | None = None
    offer_withdrawn_s: float | None = None   # PWM withdrawn while the contactor stayed closed


def step(inputs: Inputs, memory: Memory, now_s: float, timing: Timing | None = None) -> tuple[Outputs, Memory]:
    """`decide`, then the timed rules. Returns the outputs to apply and the new memory.

    - A raise of the offered current (including resuming from a pause) is applied
      only if the last raise was at least `raise_min_interval_s` ago; until then
      the previous offer stays (and a contactor that needs the new PWM stays open).
      A lowering is applied at once.
    - When the PWM is withdrawn while the EV is still in C/D and no fault stops
      energy, the contactor stays closed until the EV leaves C/D or for
      `relay_open_grace_s` at most. Faults, unplugging and B open it at once.
    """
    timing = timing or Timing()
    target = decide(inputs)
    offer_a = target.offer_current_a
    last_raise_s = memory.last_raise_s
    if offer_a > memory.offer_current_a:
        if last_raise_s is not None and now_s - last_raise_s < timing.raise_min_interval_s:
            offer_a = memory.offer_current_a   # raise deferred
        else:
            last_raise_s = now_s

    relay_closed = target.relay_closed and offer_a >= MIN_CURRENT_A
    withdrawn_s: float | None = None
    if memory.relay_closed and not relay_closed and offer_a < MIN_CURRENT_A:
        # PWM just went (or already is) off under a closed contactor.
        withdrawn_s = memory.offer_withdrawn_s if memory.offer_withdrawn_s is not None else now_s
        graceful = (inputs.cp_state in ENERGY_REQUEST_STATES
                    and not stopping_faults(inputs.faults)
                    and now_s - withdrawn_s < timing.relay_open_grace_s)
        if graceful:
            relay_closed = True
        else:
            withdrawn_s = None

    outputs = Outputs(offer_current_a=offer_a, relay_closed=relay_closed,
                      fault_signal=target.fault_signal, lock=target.lock or relay_closed)
    new_memory = Memory(offer_current_a=offer_a, relay_closed=relay_closed, last_raise_s=last_raise_s,
                        offer_withdrawn_s=withdrawn_s if relay_closed else None)
    return outputs, new_memory


def pending_raise(inputs: Inputs, memory: Memory) -> float | None:
    """The offer a deferred raise is waiting to apply, or None when nothing waits."""
    target = decide(inputs).offer_current_a
    return target if target > memory.offer_current_a else None


__all__ = [
    "ENERGY_REQUEST_STATES", "MAX_PWM_CURRENT_A", "MIN_CURRENT_A", "NO_PWM_DUTY_PERCENT",
    "PLUGGED_STATES", "Inputs", "Memory", "Outputs", "Timing",
    "current_for_duty_percent", "decide", "duty_percent_for_current",
    "offered_current_a", "pending_raise", "signals_f", "step", "stopping_faults",
]
