"""The real-hardware backend (`[hal] backend = "linux"`): sysfs PWM, GPIO, IIO ADC (CP and PP),
/sys/class/net, and an evdev keyboard-wedge RFID reader."""

from hal.linux.board import build_linux_board, classify_cp_v

__all__ = ["build_linux_board", "classify_cp_v"]
