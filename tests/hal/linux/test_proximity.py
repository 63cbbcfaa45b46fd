"""The proximity pilot on the Linux backend: PP resistor through an IIO ADC behind a pull-up."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from chargepoint.config import ConfigError
from chargepoint.evse.controller import ConnectorController
from hal.interfaces import Board, ProximityPilot
from hal.linux import build_linux_board
from hal.linux.proximity import resistance_ohm_for_pp_v
from hal.pp_coding import cable_rating_a_for_pp_ohm
from tests.hal.clock import FakeClock
from tests.hal.linux.test_board import IIO, make_tree, options

PP_RAW = f"{IIO}/in_voltage1_raw"
PULLUP_OHM, SUPPLY_V, SCALE_V = 1000.0, 3.3, 0.001   # 1 mV per count
CP_RAW = f"{IIO}/in_voltage0_raw"                     # 0.01 V per count, -12 V offset


def pp_options(root: Path, **connector: Any) -> dict[str, Any]:
    pp = {"pp_adc": f"/{PP_RAW}", "pp_adc_scale_v": SCALE_V, "pp_pullup_ohm": PULLUP_OHM, "pp_supply_v": SUPPLY_V,
          # The lock confirms what it is commanded (no feedback line): the cap is what is tested.
          "lock_feedback_gpio": None}
    return options(root, **(pp | connector))


def set_cable(root: Path, resistance_ohm: float) -> None:
    """The ADC count the divider gives with this Rc (inf: no cable)."""
    pp_v = SUPPLY_V if math.isinf(resistance_ohm) else SUPPLY_V * resistance_ohm / (resistance_ohm + PULLUP_OHM)
    (root / PP_RAW).write_text(f"{round(pp_v / SCALE_V)}\n")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    make_tree(tmp_path)
    set_cable(tmp_path, math.inf)
    return tmp_path


@pytest.fixture
def board(root: Path) -> Board:
    return build_linux_board(pp_options(root), [3], ["wifi"])


def proximity(board: Board) -> ProximityPilot:
    pp = board.connector(1).proximity
    assert pp is not None
    return pp


# --------------------------------------------------------------------------- decoding (pure)


@pytest.mark.parametrize(("nominal_ohm", "rating_a"), [(100, 63), (220, 32), (680, 20), (1500, 13)])
def test_nominal_resistors_within_3_percent_decode_to_their_rating(nominal_ohm: float, rating_a: float) -> None:
    for tolerance in (0.97, 1.0, 1.03):
        assert cable_rating_a_for_pp_ohm(nominal_ohm * tolerance) == rating_a


@pytest.mark.parametrize(("ohm", "rating_a"), [
    (74.9, None), (75.0, 63), (149.9, 63), (150.0, 32), (329.9, 32), (330.0, 20), (999.9, 20), (1000.0, 13),
    (2199.0, 13), (2200.0, None), (0.0, None), (math.inf, None),
])
def test_range_edges(ohm: float, rating_a: float | None) -> None:
    assert cable_rating_a_for_pp_ohm(ohm) == rating_a


def test_divider_model() -> None:
    # Rc = pull-up x V / (supply - V): 680 ohm under 1 kohm from 3.3 V reads 1.3357 V.
    assert resistance_ohm_for_pp_v(3.3 * 680 / 1680, pullup_ohm=1000, supply_v=3.3) == pytest.approx(680)
    assert resistance_ohm_for_pp_v(3.3, pullup_ohm=1000, supply_v=3.3) == math.inf    # open
    assert resistance_ohm_for_pp_v(3.4, pullup_ohm=1000, supply_v=3.3) == math.inf
    assert resistance_ohm_for_pp_v(-0.01, pullup_ohm=1000, supply_v=3.3) == 0.0       # short
    assert resistance_ohm_for_pp_v(math.nan, pullup_ohm=1000, supply_v=3.3) == math.inf


# --------------------------------------------------------------------------- the driver on the fake tree


@pytest.mark.parametrize(("resistance_ohm", "rating_a"), [(100, 63), (220, 32), (680, 20), (1500, 13)])
def test_cable_rating_from_the_adc(root: Path, board: Board, resistance_ohm: float, rating_a: float) -> None:
    set_cable(root, resistance_ohm)
    assert proximity(board).cable_rating_a() == rating_a


@pytest.mark.parametrize("raw", ["3300", "4095", "0", "20", "garbage"])
def test_open_short_or_unreadable_pp_is_no_valid_cable(root: Path, board: Board, raw: str) -> None:
    # 0.0, not None: None tells the EVSE logic "tethered, no cap" (hal.interfaces.ProximityPilot).
    (root / PP_RAW).write_text(raw + "\n")
    assert proximity(board).cable_rating_a() == 0.0


def test_without_pp_adc_the_connector_has_no_proximity_pilot(root: Path) -> None:
    assert build_linux_board(options(root), [3], ["wifi"]).connector(1).proximity is None


@pytest.mark.parametrize(("change", "key"), [
    ({"pp_pullup_ohm": None}, "hal.connector[0].pp_pullup_ohm"),
    ({"pp_pullup_ohm": 0}, "hal.connector[0].pp_pullup_ohm"),
    ({"pp_supply_v": "5V"}, "hal.connector[0].pp_supply_v"),
    ({"pp_supply_v": math.inf}, "hal.connector[0].pp_supply_v"),
    ({"pp_adc": ""}, "hal.connector[0].pp_adc"),
    ({"pp_adc": "/sys/bus/iio/devices/iio:device0/in_voltage7_raw"}, "hal.connector[0]"),   # not in the tree
    ({"pp_adc_scale_v": "x"}, "hal.connector[0].pp_adc_scale_v"),
])
def test_configuration_errors_name_the_key(root: Path, change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_linux_board(pp_options(root, **change), [3], ["wifi"])
    assert info.value.key == key


# --------------------------------------------------------------------------- with the EVSE controller


def charging_rig(root: Path, board: Board) -> tuple[ConnectorController, FakeClock]:
    clock = FakeClock()
    ctl = ConnectorController(board.connector(1), max_current_a=32.0, monotonic=clock)
    ctl.set_energy_allowed(True)
    (root / CP_RAW).write_text("1800\n")   # 6 V: state C, the EV asks for energy
    return ctl, clock


def duty_ns(root: Path) -> int:
    return int((root / "sys/class/pwm/pwmchip0/pwm0/duty_cycle").read_text())


def test_a_20a_cable_caps_the_offer_on_a_32a_connector(root: Path, board: Board) -> None:
    set_cable(root, 680)
    ctl, clock = charging_rig(root, board)
    for _ in range(3):
        ctl.step()
        clock.advance(0.2)
    assert ctl.offered_current_a == 20.0
    assert duty_ns(root) == 333333                     # 20 A / 0.6 = 33.3 % of 1 ms (IEC 61851-1 A.7)
    assert ctl.snapshot()["cable_rating_a"] == 20.0
    assert (root / "sys/class/gpio/gpio17/value").read_text().strip() == "1"   # charging: contactor closed


def test_a_32a_cable_gets_the_connectors_32a(root: Path, board: Board) -> None:
    set_cable(root, 220)
    ctl, _ = charging_rig(root, board)
    ctl.step()
    assert ctl.offered_current_a == 32.0
    assert duty_ns(root) == 533333


def test_a_shorted_pp_offers_nothing_and_keeps_the_contactor_open(root: Path, board: Board) -> None:
    (root / PP_RAW).write_text("0\n")
    ctl, clock = charging_rig(root, board)
    for _ in range(3):
        ctl.step()
        clock.advance(0.2)
    assert ctl.offered_current_a == 0.0
    assert duty_ns(root) == 1_000_000                  # no PWM
    assert (root / "sys/class/gpio/gpio17/value").read_text().strip() == "0"
