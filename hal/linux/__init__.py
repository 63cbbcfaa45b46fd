"""The real-hardware backend (`[hal] backend = "linux"`): sysfs PWM, GPIO, IIO ADC, /sys/class/net."""

from hal.linux.board import build_linux_board, classify_cp_v

__all__ = ["build_linux_board", "classify_cp_v"]
