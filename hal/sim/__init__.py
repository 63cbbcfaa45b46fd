"""The simulated hardware backend (`[hal] backend = "sim"`, interfaces.md §6)."""

from hal.sim.board import CommandRefused, SimBoard, SimChange, SimMeter

__all__ = ["CommandRefused", "SimBoard", "SimChange", "SimMeter"]
