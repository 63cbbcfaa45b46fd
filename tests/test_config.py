"""Configuration file validation (interfaces.md §3): one clear line naming the key, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chargepoint.config import ConfigError, load_settings, parse_settings

GOOD = """
[ocpp]
url = "wss://ocpp.example.com/ocpp"
charge_point_id = "CP-0001"
password = "0123456789abcdef0123"
[ocpp.config]
HeartbeatInterval = 300
[tls]
ca_file = "ca.pem"
[storage]
state_dir = "state"
[control]
socket = "control.sock"
"""


def minimal(**ocpp: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"ocpp": {"url": "wss://cs.example/ocpp", "charge_point_id": "CP-1/a",
                                    "password": "0123456789abcdef"}}
    doc["ocpp"].update(ocpp)
    return doc


def test_endpoint_url_appends_the_percent_encoded_id() -> None:
    settings = parse_settings(minimal())
    assert settings.ocpp.endpoint_url == "wss://cs.example/ocpp/CP-1%2Fa"


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        (minimal(url="ws://cs.example/ocpp"), "ocpp.url"),
        (minimal(url="https://cs.example/ocpp"), "ocpp.url"),
        (minimal(password="short"), "ocpp.password"),
        ({"ocpp": {"url": "wss://cs/ocpp", "charge_point_id": "CP"}}, "ocpp.password"),
        ({"ocpp": {"url": "wss://cs/ocpp", "password": "0123456789abcdef"}}, "ocpp.charge_point_id"),
        ({**minimal(), "ntp": {"servers": []}}, "ntp.servers"),
        ({**minimal(), "ntp": {"servers": ["host:notaport"]}}, "ntp.servers"),
        ({**minimal(), "ntp": {"resync_interval_s": 10}}, "ntp.resync_interval_s"),
        ({**minimal(), "ntp": {"resync_interval_s": -1}}, "ntp.resync_interval_s"),
        ({**minimal(), "hal": {"backend": "arduino"}}, "hal.backend"),
        ({**minimal(), "meter": {"driver": "nope"}}, "meter.driver"),
        ({**minimal(), "meter": {"driver": "sdm630", "transport": "rtu"}}, "meter.device"),
        ({**minimal(), "connector": [{"max_current_a": 100}]}, "connector[0].max_current_a"),
        ({**minimal(), "connector": [{"phases": 2}]}, "connector[0].phases"),
        ({**minimal(), "unknown_table": {}}, "unknown_table"),
        ({**minimal(), "authorization": {"free_vend_id_tag": "X" * 21}}, "authorization.free_vend_id_tag"),
    ],
)
def test_bad_configuration_names_the_key(doc: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(doc)
    assert info.value.key == key


def test_ntp_resync_defaults_to_six_hours_and_zero_turns_it_off() -> None:
    assert parse_settings(minimal()).ntp.resync_interval_s == 6 * 3600
    assert parse_settings({**minimal(), "ntp": {"resync_interval_s": 0}}).ntp.resync_interval_s == 0
    assert parse_settings({**minimal(), "ntp": {"resync_interval_s": 64}}).ntp.resync_interval_s == 64


def test_password_file_must_be_private(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("0123456789abcdef0123\n")
    os.chmod(secret, 0o644)
    doc = minimal(password=None)
    del doc["ocpp"]["password"]
    doc["ocpp"]["password_file"] = str(secret)
    with pytest.raises(ConfigError) as info:
        parse_settings(doc)
    assert info.value.key == "ocpp.password_file"
    os.chmod(secret, 0o600)
    assert parse_settings(doc).ocpp.password == "0123456789abcdef0123"


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cp.toml"
    path.write_text(GOOD)
    settings = load_settings(path)
    assert settings.tls.ca_file == tmp_path / "ca.pem"
    assert settings.storage.state_dir == tmp_path / "state"
    assert settings.ocpp.initial_config == {"HeartbeatInterval": 300}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chargepoint", *args], capture_output=True, text=True, timeout=60)


def test_check_config_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    (tmp_path / "ca.pem").write_text(Path("/etc/ssl/certs/ca-certificates.crt").read_text()
                                     if Path("/etc/ssl/certs/ca-certificates.crt").exists() else "")
    good.write_text(GOOD)
    result = run_cli("check-config", str(good))
    if (tmp_path / "ca.pem").stat().st_size:
        assert result.returncode == 0, result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("wss://", "ws://"))
    result = run_cli("check-config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ocpp.url" in lines[0] and "Traceback" not in result.stderr


def test_run_with_a_bad_configuration_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("HeartbeatInterval = 300", "HeartbeatInterval = -5"))
    (tmp_path / "ca.pem").write_text("")
    result = run_cli("run", "--config", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_run_with_an_invalid_toml_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[ocpp\nurl=")
    result = run_cli("run", "--config", str(bad))
    assert result.returncode == 2 and "not valid TOML" in result.stderr


@pytest.mark.parametrize("form", [["--config", "{f}"], ["--config={f}"]])
def test_run_reads_its_config_without_loading_argparse(tmp_path: Path, form: list[str]) -> None:
    # The daemon's `run` skips argparse (0.6 MB of resident memory for years, issue 2):
    # both spellings reach the configuration, and argparse is never imported.
    bad = tmp_path / "bad.toml"
    bad.write_text("[ocpp\nurl=")
    args = [a.replace("{f}", str(bad)) for a in form]
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "chargepoint", "run", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not valid TOML" in result.stderr
    assert "| argparse" not in result.stderr


@pytest.mark.parametrize("args", [["run", "--bogus"], ["run", "--config"], ["run", "--config", "a.toml", "extra"]])
def test_run_with_anything_else_gets_argparse_usage_and_exit_2(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2 and "usage: chargepoint" in result.stderr


def test_status_without_a_daemon_exits_1(tmp_path: Path) -> None:
    result = run_cli("status", "--socket", str(tmp_path / "nobody.sock"))
    assert result.returncode == 1
    assert "no daemon answers" in result.stderr


def test_shipped_configurations_are_valid() -> None:
    root = Path(__file__).resolve().parents[1]
    for name in ("chargepoint.toml", "sim.toml"):
        path = root / "config" / name
        if name == "chargepoint.toml":
            # The production file reads a password file that only exists on a charger.
            text = path.read_text().replace('password_file = "/etc/chargepoint/authorization-key"',
                                            'password = "0123456789abcdef0123"')
            import tomllib

            parse_settings(tomllib.loads(text), path)
        else:
            load_settings(path)
