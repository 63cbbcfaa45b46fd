"""The daemon's one source of time (docs/ARCHITECTURE.md, "chargepoint.clock.Clock").

Deadlines use the monotonic clock. Wall time is only for OCPP timestamps and only
trusted once synchronised (NTP, or the central system's currentTime as a fallback):
events recorded before that are stamped with the monotonic time and re-stamped by
`resolve()` once the clock is synced, so nothing is ever sent as 1970.

`offset_s` is always "true time minus system time". When NTP steps the system clock
the offset is ~0 afterwards; with `[ntp] set_clock = false` the system clock is never
touched and `wall_s()` adds the offset instead.

A "boot" (EventTime.boot_id): the kernel's boot id (/proc/sys/kernel/random/boot_id)
when the default system monotonic clock is used, because CLOCK_MONOTONIC is shared by
every process of one kernel boot, so a restarted daemon can still re-stamp events an
earlier process recorded before sync. With an injected monotonic function, or when
/proc is unavailable, a boot is one Clock (one daemon process start): a random id.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Plausibility floor: the package cannot run before it was built. A system clock
# earlier than this (an RTC-less board at 1970) is known wrong.
BUILD_EPOCH_S: float = datetime(2026, 11, 1, tzinfo=UTC).timestamp()  # not calendar: it pulls in locale

# An NTP sync older than this no longer outranks the central system's currentTime.
NTP_STALE_AFTER_S = 24 * 3600.0

KERNEL_BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")

SOURCE_NTP = "ntp"
SOURCE_CENTRAL_SYSTEM = "central_system"


@dataclass(frozen=True)
class EventTime:
    """When something happened: always the monotonic time, the wall time only if synced."""

    boot_id: str
    monotonic_s: float
    wall_s: float | None


def kernel_boot_id(path: Path = KERNEL_BOOT_ID_PATH) -> str | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError:
        return None
    return text or None


class Clock:
    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 build_epoch_s: float = BUILD_EPOCH_S,
                 boot_id: str | None = None,
                 ntp_stale_after_s: float = NTP_STALE_AFTER_S) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self.build_epoch_s = build_epoch_s
        if boot_id is None and monotonic is time.monotonic:
            boot_id = kernel_boot_id()
        self.boot_id = boot_id or uuid.uuid4().hex
        self.ntp_stale_after_s = ntp_stale_after_s
        self.offset_s: float | None = None
        self.last_sync: datetime | None = None
        self.sync_source: str | None = None
        self.last_step_s: float | None = None  # size of the last system clock step, for the log/status
        self._last_ntp_monotonic_s: float | None = None
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, callback: Callable[[], None]) -> None:
        """callback() after every apply_offset (a sync, or a step of the system clock by us), so
        a wait for a wall-clock time (reservation expiry) or for a step (SettingSystemTime)
        needs no polling. A step of the system clock by anyone else has no event."""
        self._listeners.append(callback)

    # ------------------------------------------------------------------ reading

    def monotonic_s(self) -> float:
        return self._monotonic()

    def system_s(self) -> float:
        """The system clock as it is, without our offset (what NTP offsets are measured against)."""
        return self._wall()

    def wall_s(self) -> float:
        return self._wall() + (self.offset_s or 0.0)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.wall_s(), UTC)

    @property
    def synced(self) -> bool:
        return self.offset_s is not None

    @property
    def plausible(self) -> bool:
        """Good enough to check certificate validity: synced, or not before the build date."""
        return self.synced or self._wall() >= self.build_epoch_s

    @property
    def ntp_fresh(self) -> bool:
        if self._last_ntp_monotonic_s is None:
            return False
        return self._monotonic() - self._last_ntp_monotonic_s < self.ntp_stale_after_s

    # ------------------------------------------------------------------ syncing

    def apply_offset(self, offset_s: float, source: str, stepped: bool) -> None:
        """Record a measured offset (true - system). `stepped`: the system clock was already
        moved by offset_s, so the remaining offset is zero."""
        if not math.isfinite(offset_s):
            raise ValueError("offset must be finite")
        if stepped:
            self.last_step_s = offset_s
            self.offset_s = 0.0
        else:
            self.offset_s = offset_s
        self.sync_source = source
        self.last_sync = self.now()
        if source == SOURCE_NTP:
            self._last_ntp_monotonic_s = self._monotonic()
        for callback in list(self._listeners):
            callback()

    def apply_central_time(self, current_time: str | datetime) -> bool:
        """BootNotification.conf / Heartbeat.conf currentTime (OCPP 1.6 §6.3, §6.31) as a
        fallback source: used only when NTP has not succeeded this boot or is stale, never
        over a fresh NTP sync. Never steps the system clock. Returns True when applied."""
        if self.ntp_fresh:
            return False
        if isinstance(current_time, str):
            current_time = datetime.fromisoformat(current_time)
        if current_time.tzinfo is None:
            current_time = current_time.replace(tzinfo=UTC)
        self.apply_offset(current_time.timestamp() - self._wall(), SOURCE_CENTRAL_SYSTEM, stepped=False)
        return True

    # ------------------------------------------------------------------ event times

    def event_time(self) -> EventTime:
        return EventTime(self.boot_id, self._monotonic(), self.wall_s() if self.synced else None)

    def resolve(self, t: EventTime) -> datetime | None:
        """The event's UTC time; pre-sync events of this boot are re-stamped from the
        monotonic clock once synced. An unsynced event of an earlier boot gives None."""
        if t.wall_s is not None:
            return datetime.fromtimestamp(t.wall_s, UTC)
        if t.boot_id != self.boot_id or not self.synced:
            return None
        return datetime.fromtimestamp(t.monotonic_s + (self.wall_s() - self._monotonic()), UTC)

    @staticmethod
    def iso8601(dt: datetime) -> str:
        """UTC with milliseconds and "Z": "2026-11-24T10:00:00.000Z". Naive means UTC."""
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        dt = dt.astimezone(UTC)
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"

    def to_json(self) -> dict[str, Any]:
        """The `clock` object of the control socket's status (interfaces.md section 5)."""
        return {
            "synced": self.synced,
            "offset_s": self.offset_s,
            "last_sync": None if self.last_sync is None else self.last_sync.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "source": self.sync_source,
        }
