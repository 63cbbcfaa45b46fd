"""OCPP configuration keys (OCPP 1.6 §5.3, §5.8, §9; Security WP §7.2), persisted in the real store."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from chargepoint.config import ConfigError
from chargepoint.services.configuration import ConfigurationStore, default_key_table
from chargepoint.store.db import Store


def make(tmp_path: Path, initial: dict[str, object] | None = None) -> tuple[Store, ConfigurationStore]:
    store = Store(tmp_path)
    return store, ConfigurationStore(store, default_key_table(number_of_connectors=2), initial=initial)


def test_every_required_core_key_is_reported(tmp_path: Path) -> None:
    _, config = make(tmp_path)
    keys = {k["key"]: k for k in config.get_configuration(None)["configurationKey"]}
    required = ["AuthorizeRemoteTxRequests", "ClockAlignedDataInterval", "ConnectionTimeOut",
                "ConnectorPhaseRotation", "GetConfigurationMaxKeys", "HeartbeatInterval", "LocalAuthorizeOffline",
                "LocalPreAuthorize", "MeterValuesAlignedData", "MeterValuesSampledData", "MeterValueSampleInterval",
                "NumberOfConnectors", "ResetRetries", "StopTransactionOnEVSideDisconnect",
                "StopTransactionOnInvalidId", "StopTxnAlignedData", "StopTxnSampledData", "SupportedFeatureProfiles",
                "TransactionMessageAttempts", "TransactionMessageRetryInterval", "UnlockConnectorOnEVSideDisconnect",
                "LocalAuthListEnabled", "LocalAuthListMaxLength", "SendLocalListMaxLength",
                "ChargeProfileMaxStackLevel", "ChargingScheduleAllowedChargingRateUnit", "ChargingScheduleMaxPeriods",
                "MaxChargingProfilesInstalled"]
    missing = [k for k in required if k not in keys]
    assert not missing
    assert keys["NumberOfConnectors"] == {"key": "NumberOfConnectors", "readonly": True, "value": "2"}
    assert keys["HeartbeatInterval"]["readonly"] is False
    assert "AuthorizationKey" not in keys


def test_listed_keys_and_unknown_keys(tmp_path: Path) -> None:
    _, config = make(tmp_path)
    answer = config.get_configuration(["HeartbeatInterval", "NoSuchKey"])
    assert answer == {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}],
                      "unknownKey": ["NoSuchKey"]}


@pytest.mark.parametrize(
    ("key", "value", "status"),
    [
        ("HeartbeatInterval", "120", "Accepted"),
        ("HeartbeatInterval", "-1", "Rejected"),
        ("HeartbeatInterval", "abc", "Rejected"),
        ("NumberOfConnectors", "3", "Rejected"),          # read-only
        ("NoSuchKey", "1", "NotSupported"),
        ("StopTransactionOnInvalidId", "TRUE", "Accepted"),
        ("StopTransactionOnInvalidId", "yes", "Rejected"),
        ("MeterValuesSampledData", "Energy.Active.Import.Register,Voltage", "Accepted"),
        ("MeterValuesSampledData", "Energy.Active.Import.Register,SoC", "Rejected"),  # unsupported measurand
        ("MeterValuesSampledData", "Voltage,Voltage", "Rejected"),
        ("ConnectorPhaseRotation", "0.RST, 1.RTS", "Accepted"),
        ("ConnectorPhaseRotation", "1.XYZ", "Rejected"),
        ("AuthorizationKey", "0123456789abcdef", "Accepted"),
        ("AuthorizationKey", "tooshort", "Rejected"),
    ],
)
def test_change_configuration_statuses(tmp_path: Path, key: str, value: str, status: str) -> None:
    _, config = make(tmp_path)
    assert config.change_configuration(key, value) == status


def test_rejected_change_changes_nothing(tmp_path: Path) -> None:
    _, config = make(tmp_path)
    config.change_configuration("MeterValuesSampledData", "Energy.Active.Import.Register,SoC")
    assert config.get_csl("MeterValuesSampledData") == ["Energy.Active.Import.Register", "Power.Active.Import"]


def test_changes_persist_and_the_file_seeds_first_start_only(tmp_path: Path) -> None:
    store, config = make(tmp_path, {"HeartbeatInterval": 60})
    assert config.get_int("HeartbeatInterval") == 60
    assert config.change_configuration("HeartbeatInterval", "900") == "Accepted"
    store.close()
    # Second start with a different seed: the persisted value (set by the central system) wins.
    _, again = make(tmp_path, {"HeartbeatInterval": 30})
    assert again.get_int("HeartbeatInterval") == 900


def test_unknown_or_invalid_seed_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make(tmp_path, {"HeartbeatIntervall": 60})
    assert info.value.key == "ocpp.config.HeartbeatIntervall"
    with pytest.raises(ConfigError) as info:
        make(tmp_path / "b", {"HeartbeatInterval": "often"})
    assert info.value.key == "ocpp.config.HeartbeatInterval"


def test_listeners_hear_accepted_changes_only(tmp_path: Path) -> None:
    _, config = make(tmp_path)
    heard: list[tuple[str, str]] = []
    config.add_listener(lambda k, v: heard.append((k, v)))
    config.change_configuration("HeartbeatInterval", "abc")
    config.change_configuration("HeartbeatInterval", "60")
    assert heard == [("HeartbeatInterval", "60")]


def test_keys_and_values_are_logged_on_one_line_and_the_authorization_key_never(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ChangeConfiguration's value is the central system's text (CpoName takes any character):
    logged raw, a CR/LF in it forged a log line; one line per event, and never an
    AuthorizationKey value (docs/ARCHITECTURE.md, Security WP §7.2)."""
    _, config = make(tmp_path)
    with caplog.at_level(logging.INFO, logger="chargepoint.config"):
        assert config.change_configuration("CpoName", "Cpo\r\nINFO forged") == "Accepted"
        assert config.change_configuration("AuthorizationKey", "0123456789abcdef") == "Accepted"
        assert config.change_configuration("HeartbeatInterval", "x\ny") == "Rejected"
    lines = [r.getMessage() for r in caplog.records]
    assert any(repr("Cpo\r\nINFO forged") in line for line in lines), lines
    assert not [line for line in lines if "\r" in line or "\n" in line]
    assert not [line for line in lines if "0123456789abcdef" in line]
