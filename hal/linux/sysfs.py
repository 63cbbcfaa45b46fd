"""Small sysfs primitives: attribute files, legacy GPIO, PWM, IIO ADC.

Everything is addressed under a root directory (normally "/"), so the whole
backend runs against a fake tree of plain files in tests.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("chargepoint.hal.linux")

PWM_PERIOD_NS = 1_000_000  # IEC 61851-1: 1 kHz control pilot


class SysfsError(Exception):
    """A sysfs attribute is missing or cannot be used."""


def under(root: Path, path: str | Path) -> Path:
    """path (absolute like /sys/..., or relative) inside root."""
    return root / str(path).lstrip("/")


def read_attr(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise SysfsError(f"cannot read {path}: {exc.strerror or exc}") from None


def write_attr(path: Path, value: str | int) -> None:
    try:
        # Like `echo value > attr`: O_TRUNC is ignored by sysfs, the short value goes out in one write().
        with path.open("w") as fh:
            fh.write(str(value))
    except OSError as exc:
        raise SysfsError(f"cannot write {path}: {exc.strerror or exc}") from None


class Gpio:
    """One line of the legacy sysfs GPIO interface (/sys/class/gpio/gpioN)."""

    def __init__(self, root: Path, number: int, *, output: bool, active_low: bool = False) -> None:
        self.number = number
        self.active_low = active_low
        base = under(root, "/sys/class/gpio")
        self.path = base / f"gpio{number}"
        if not self.path.exists():
            write_attr(base / "export", number)
        if not (self.path / "value").exists():
            raise SysfsError(f"GPIO {number} not available at {self.path}")
        if (self.path / "direction").exists():
            write_attr(self.path / "direction", "out" if output else "in")

    def read(self) -> bool:
        level = read_attr(self.path / "value") not in ("0", "")
        return level != self.active_low

    def write(self, active: bool) -> None:
        write_attr(self.path / "value", "1" if active != self.active_low else "0")


class PwmChannel:
    """One PWM output (/sys/class/pwm/pwmchipN/pwmM) at 1 kHz."""

    def __init__(self, root: Path, chip: int, channel: int, period_ns: int = PWM_PERIOD_NS) -> None:
        chip_path = under(root, f"/sys/class/pwm/pwmchip{chip}")
        self.path = chip_path / f"pwm{channel}"
        if not self.path.exists():
            write_attr(chip_path / "export", channel)
        if not (self.path / "period").exists():
            raise SysfsError(f"PWM channel {channel} of pwmchip{chip} not available at {self.path}")
        self.period_ns = period_ns
        # The kernel refuses a period shorter than the current duty cycle: zero the duty first.
        write_attr(self.path / "duty_cycle", 0)
        write_attr(self.path / "period", period_ns)
        write_attr(self.path / "enable", 1)

    def set_duty_ns(self, duty_ns: int) -> None:
        write_attr(self.path / "duty_cycle", max(0, min(self.period_ns, duty_ns)))


class Adc:
    """An IIO channel (in_voltageX_raw) converted to volts: raw x scale_v + offset_v."""

    def __init__(self, path: Path, scale_v: float, offset_v: float) -> None:
        self.path = path
        self.scale_v = scale_v
        self.offset_v = offset_v
        if not path.exists():
            raise SysfsError(f"ADC channel {path} not available")

    def read_v(self) -> float:
        raw = read_attr(self.path)
        try:
            return int(raw) * self.scale_v + self.offset_v
        except ValueError:
            raise SysfsError(f"{self.path}: not a number: {raw!r}") from None
