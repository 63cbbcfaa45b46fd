"""hal.faults: the one table from hardware faults to OCPP 1.6 error codes (§7.6, §4.9)."""

from __future__ import annotations

import pytest

from hal import faults
from hal.interfaces import Fault

# OCPP 1.6 §7.6 ChargePointErrorCode.
OCPP16_ERROR_CODES = {
    "ConnectorLockFailure", "EVCommunicationError", "GroundFailure", "HighTemperature", "InternalError",
    "LocalListConflict", "NoError", "OtherError", "OverCurrentFailure", "OverVoltage", "PowerMeterFailure",
    "PowerSwitchFailure", "ReaderFailure", "ResetFailure", "UnderVoltage", "WeakSignal",
}


def test_every_fault_maps_to_a_real_ocpp16_error_code() -> None:
    for fault in Fault:
        report = faults.report_for(fault)
        assert report.error_code in OCPP16_ERROR_CODES - {"NoError"}
        assert 0 < len(report.vendor_error_code) <= 50  # CiString50
        assert 0 < len(report.info) <= 50  # CiString50


@pytest.mark.parametrize(("fault", "code"), [
    (Fault.GROUND_FAULT, "GroundFailure"),
    (Fault.OVERCURRENT, "OverCurrentFailure"),
    (Fault.RELAY_WELD, "PowerSwitchFailure"),
    (Fault.METER_LOST, "PowerMeterFailure"),
    (Fault.LOCK_FAILURE, "ConnectorLockFailure"),
    (Fault.OVER_TEMPERATURE, "HighTemperature"),
    (Fault.PILOT_FAULT, "EVCommunicationError"),
])
def test_fault_error_codes(fault: Fault, code: str) -> None:
    assert faults.error_code({fault}) == code


def test_no_fault_is_no_error() -> None:
    assert faults.error_code(()) == "NoError"
    assert faults.primary_fault([]) is None
    assert not faults.stops_charging([])
    assert not faults.is_faulted([])


def test_meter_lost_is_a_warning_that_keeps_charging_ocpp16_4_9() -> None:
    assert not faults.stops_charging({Fault.METER_LOST})
    assert not faults.is_faulted({Fault.METER_LOST})


def test_ev_communication_error_is_never_faulted_ocpp16_4_9() -> None:
    # §4.9: EVCommunicationError only with Preparing/SuspendedEV/SuspendedEVSE/Finishing, as a warning.
    assert not faults.is_faulted({Fault.PILOT_FAULT})
    assert faults.stops_charging({Fault.PILOT_FAULT})


def test_the_most_severe_fault_is_reported() -> None:
    assert faults.error_code({Fault.METER_LOST, Fault.GROUND_FAULT}) == "GroundFailure"
    assert faults.error_code({Fault.PILOT_FAULT, Fault.LOCK_FAILURE}) == "ConnectorLockFailure"
    assert faults.is_faulted({Fault.METER_LOST, Fault.RELAY_WELD})
