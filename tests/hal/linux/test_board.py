"""The Linux backend against a fake sysfs tree of plain files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chargepoint.config import ConfigError
from hal.interfaces import Board, CpState, Fault, MeterError
from hal.linux import build_linux_board, classify_cp_v

IIO = "sys/bus/iio/devices/iio:device0"


def make_tree(root: Path) -> None:
    pwm = root / "sys/class/pwm/pwmchip0"
    (pwm / "pwm0").mkdir(parents=True)
    for attr in ("period", "duty_cycle", "enable"):
        (pwm / "pwm0" / attr).write_text("0\n")
    (pwm / "export").write_text("")
    for number in (17, 27, 22, 23, 5, 6):
        gpio = root / f"sys/class/gpio/gpio{number}"
        gpio.mkdir(parents=True)
        (gpio / "value").write_text("0\n")
        (gpio / "direction").write_text("in\n")
    (root / "sys/class/gpio/export").write_text("")
    (root / IIO).mkdir(parents=True)
    (root / IIO / "in_voltage0_raw").write_text("2400\n")  # 12 V: state A
    (root / "sys/class/net/wlan0").mkdir(parents=True)
    (root / "sys/class/net/wlan0/operstate").write_text("up\n")


def options(root: Path, **connector: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "pwm_chip": 0, "pwm_channel": 0, "cp_adc": f"/{IIO}/in_voltage0_raw",
        "cp_adc_scale_v": 0.01, "cp_adc_offset_v": -12.0,
        "relay_gpio": 17, "relay_feedback_gpio": 27, "lock_gpio": 22, "lock_feedback_gpio": 23,
        "fault_gpios": {"ground_fault": 5, "overcurrent": 6},
    }
    table.update(connector)
    return {"sysfs_root": str(root), "network_interfaces": {"wifi": "wlan0", "gsm": "ppp0"}, "connector": [table]}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    make_tree(tmp_path)
    return tmp_path


@pytest.fixture
def board(root: Path) -> Board:
    return build_linux_board(options(root), [3], ["wifi", "gsm"])


def attr(root: Path, path: str) -> str:
    return (root / path).read_text().strip()


def set_attr(root: Path, path: str, value: str) -> None:
    (root / path).write_text(value + "\n")


def test_pilot_pwm_is_1khz_and_starts_without_pwm(root: Path, board: Board) -> None:
    assert attr(root, "sys/class/pwm/pwmchip0/pwm0/period") == "1000000"
    assert attr(root, "sys/class/pwm/pwmchip0/pwm0/enable") == "1"
    assert attr(root, "sys/class/pwm/pwmchip0/pwm0/duty_cycle") == "1000000"  # 100 %: steady +12 V
    assert board.connector(1).pilot.duty_percent == 100.0


def test_offered_current_becomes_duty_cycle_iec61851_table_a7(root: Path, board: Board) -> None:
    pilot = board.connector(1).pilot
    pilot.offer_current(16)
    assert attr(root, "sys/class/pwm/pwmchip0/pwm0/duty_cycle") == "266667"
    pilot.offer_current(3)  # below 6 A: pause, no PWM
    assert attr(root, "sys/class/pwm/pwmchip0/pwm0/duty_cycle") == "1000000"


def test_fault_signal_drives_steady_low_for_state_f(root: Path, board: Board) -> None:
    pilot = board.connector(1).pilot
    pilot.offer_current(32)
    pilot.set_fault_signal(True)
    assert attr(root, "sys/class/pwm/pwmchip0/pwm0/duty_cycle") == "0"
    assert pilot.duty_percent == 100.0
    pilot.set_fault_signal(False)
    assert attr(root, "sys/class/pwm/pwmchip0/pwm0/duty_cycle") == "533333"


@pytest.mark.parametrize(("raw", "state"), [("2400", CpState.A), ("2100", CpState.B), ("1800", CpState.C),
                                            ("1500", CpState.D), ("1200", CpState.E), ("0", CpState.F),
                                            ("garbage", CpState.E)])
def test_cp_state_from_the_adc(root: Path, board: Board, raw: str, state: CpState) -> None:
    set_attr(root, f"{IIO}/in_voltage0_raw", raw)
    assert board.connector(1).pilot.read_state() is state


def test_cp_thresholds_are_midpoints_between_nominal_levels() -> None:
    assert classify_cp_v(10.6) is CpState.A
    assert classify_cp_v(10.4) is CpState.B
    assert classify_cp_v(4.6) is CpState.C
    assert classify_cp_v(-5.9) is CpState.E
    assert classify_cp_v(-6.1) is CpState.F


def test_relay_drives_its_line_and_a_welded_contact_is_detected(root: Path, board: Board) -> None:
    hw = board.connector(1)
    hw.relay.set_closed(True)
    assert attr(root, "sys/class/gpio/gpio17/value") == "1"
    assert attr(root, "sys/class/gpio/gpio17/direction") == "out"
    set_attr(root, "sys/class/gpio/gpio27/value", "1")  # mirror contact follows
    assert hw.relay.feedback_closed() is True
    assert Fault.RELAY_WELD not in hw.faults.active_faults()
    hw.relay.set_closed(False)
    assert attr(root, "sys/class/gpio/gpio17/value") == "0"
    # The contact did not open: welded.
    assert Fault.RELAY_WELD in hw.faults.active_faults()


def test_active_low_feedback_line(root: Path) -> None:
    board = build_linux_board(options(root, active_low_gpios=[27]), [3], ["wifi"])
    set_attr(root, "sys/class/gpio/gpio27/value", "0")
    assert board.connector(1).relay.feedback_closed() is True


def test_lock_reports_the_feedback_and_a_mismatch(root: Path, board: Board) -> None:
    lock = board.connector(1).lock
    assert lock.set_locked(True) is False  # the feedback line still says unlocked
    assert attr(root, "sys/class/gpio/gpio22/value") == "1"
    assert Fault.LOCK_FAILURE in board.connector(1).faults.active_faults()
    set_attr(root, "sys/class/gpio/gpio23/value", "1")
    assert lock.is_locked() is True
    assert lock.set_locked(True) is True
    assert board.connector(1).faults.active_faults() == frozenset()


def test_fault_inputs(root: Path, board: Board) -> None:
    assert board.connector(1).faults.active_faults() == frozenset()
    set_attr(root, "sys/class/gpio/gpio5/value", "1")
    assert board.connector(1).faults.active_faults() == frozenset({Fault.GROUND_FAULT})


def test_network_links_follow_operstate(root: Path, board: Board) -> None:
    assert board.network.active_link() == "wifi"
    assert [(link.name, link.up) for link in board.network.links()] == [("wifi", True), ("gsm", False)]
    set_attr(root, "sys/class/net/wlan0/operstate", "down")
    assert board.network.active_link() is None
    (root / "sys/class/net/ppp0").mkdir()
    set_attr(root, "sys/class/net/ppp0/operstate", "unknown")  # what a connected PPP link reports
    assert board.network.active_link() == "gsm"


@pytest.mark.asyncio
async def test_without_a_meter_table_the_meter_raises_meter_error(board: Board) -> None:
    with pytest.raises(MeterError, match="no energy meter"):
        await board.connector(1).meter.read()


def test_tethered_connector_without_lock_lines(root: Path) -> None:
    board = build_linux_board(options(root, lock_gpio=None, lock_feedback_gpio=None), [3], ["wifi"])
    assert board.connector(1).lock.set_locked(True) is True
    assert board.connector(1).proximity is None


@pytest.mark.parametrize(("change", "key"), [
    ({"relay_gpio": None}, "hal.connector[0].relay_gpio"),
    ({"relay_gpio": 99}, "hal.connector[0]"),                   # no such line in the tree
    ({"fault_gpios": {"meteor": 5}}, "hal.connector[0].fault_gpios.meteor"),
    ({"cp_adc": None}, "hal.connector[0].cp_adc"),
    ({"cp_thresholds_v": [1, 2, 3, 4, 5]}, "hal.connector[0].cp_thresholds_v"),
])
def test_configuration_errors_name_the_key(root: Path, change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_linux_board(options(root, **change), [3], ["wifi"])
    assert info.value.key == key


def test_one_hal_connector_table_per_connector(root: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build_linux_board(options(root), [3, 3], ["wifi"])
    assert info.value.key == "hal.connector"
