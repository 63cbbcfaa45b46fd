"""Measurands combined with a phase in the MeterValues*Data keys (OCPP 1.6 §9.1.17: "Where
applicable, the Measurand is combined with the optional phase; for instance: Voltage.L1")."""

from __future__ import annotations

import pytest

from chargepoint.services.configuration import ConfigurationStore, default_key_table, split_phase
from chargepoint.services.metering import Sample, sampled_values


class _Kv:
    def __init__(self) -> None:
        self.data: dict[tuple[str, str], object] = {}

    def kv_get(self, ns: str, key: str, default: object = None) -> object:
        return self.data.get((ns, key), default)

    def kv_put(self, ns: str, key: str, value: object) -> None:
        self.data[(ns, key)] = value


@pytest.mark.parametrize(("item", "expected"), [
    ("Voltage.L1", ("Voltage", 0)),
    ("Voltage.L3-N", ("Voltage", 2)),
    ("Current.Import.L2", ("Current.Import", 1)),
    ("Energy.Active.Import.Register", ("Energy.Active.Import.Register", None)),
    ("Voltage", ("Voltage", None)),
    ("Power.Active.Import.L1", ("Power.Active.Import.L1", None)),   # not a per-phase measurand here
])
def test_split_phase(item: str, expected: tuple[str, int | None]) -> None:
    assert split_phase(item) == expected


@pytest.mark.parametrize(("key", "value", "status"), [
    ("MeterValuesSampledData", "Voltage.L1,Current.Import.L3", "Accepted"),
    ("MeterValuesAlignedData", "Energy.Active.Import.Register,Voltage.L2-N", "Accepted"),
    ("StopTxnSampledData", "Current.Import.L1", "Accepted"),
    ("MeterValuesSampledData", "Voltage.L4", "Rejected"),
    ("MeterValuesSampledData", "Current.Import.N", "Rejected"),
    ("MeterValuesSampledData", "Energy.Active.Import.Register.L1", "Rejected"),
])
def test_phase_suffixes_accepted_only_where_the_meter_measures_per_phase(key: str, value: str, status: str) -> None:
    config = ConfigurationStore(_Kv(), default_key_table(number_of_connectors=1))
    before = config.raw(key)
    assert config.change_configuration(key, value) == status
    assert config.raw(key) == (value if status == "Accepted" else before)   # errata 3.14.4: no change


def test_a_phase_suffix_reports_that_phase_only_and_the_plain_measurand_every_phase() -> None:
    sample = Sample(energy_wh=1000.4, power_w=6900.0, current_a=(10.0, 11.0, 12.0), voltage_v=(230.0, 231.0, 232.0))
    values = sampled_values(["Voltage.L2", "Current.Import.L3", "Current.Import"], sample, "Sample.Periodic")
    assert [(v["measurand"], v["phase"], v["value"]) for v in values] == [
        ("Voltage", "L2-N", "231"), ("Current.Import", "L3", "12"),
        ("Current.Import", "L1", "10"), ("Current.Import", "L2", "11"), ("Current.Import", "L3", "12")]


def test_a_phase_the_meter_lacks_reports_nothing_for_it() -> None:
    single = Sample(energy_wh=10.0, power_w=2300.0, current_a=(10.0,), voltage_v=(230.0,), phases=1)
    assert sampled_values(["Current.Import.L2"], single, "Sample.Periodic") == []
