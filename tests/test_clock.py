"""chargepoint.clock.Clock: injected time, offsets, re-stamping of pre-sync events."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from chargepoint.clock import BUILD_EPOCH_S, KERNEL_BOOT_ID_PATH, Clock, EventTime

TRUE_NOW_S = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC).timestamp()


class FakeTime:
    def __init__(self, monotonic_s: float, wall_s: float) -> None:
        self.monotonic_s, self.wall_s = monotonic_s, wall_s

    def advance(self, seconds: float) -> None:
        self.monotonic_s += seconds
        self.wall_s += seconds

    def clock(self, boot_id: str | None = None, ntp_stale_after_s: float = 24 * 3600.0) -> Clock:
        return Clock(monotonic=lambda: self.monotonic_s, wall=lambda: self.wall_s, boot_id=boot_id,
                     ntp_stale_after_s=ntp_stale_after_s)


def test_unsynced_clock_gives_no_wall_time_for_events() -> None:
    t = FakeTime(100.0, 1000.0)  # an RTC-less board at 1970
    clock = t.clock()
    assert not clock.synced
    assert clock.offset_s is None
    assert not clock.plausible
    assert clock.event_time() == EventTime(clock.boot_id, 100.0, None)


def test_unsynced_clock_after_build_date_is_plausible() -> None:
    clock = FakeTime(1.0, BUILD_EPOCH_S + 10).clock()
    assert clock.plausible and not clock.synced
    assert not FakeTime(1.0, BUILD_EPOCH_S - 10).clock().plausible


def test_offset_added_to_system_time_when_clock_not_stepped() -> None:
    t = FakeTime(5.0, TRUE_NOW_S - 3600)
    clock = t.clock()
    clock.apply_offset(3600.0, "ntp", stepped=False)
    assert clock.synced and clock.plausible
    assert clock.wall_s() == pytest.approx(TRUE_NOW_S)
    assert clock.now() == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    assert clock.event_time().wall_s == pytest.approx(TRUE_NOW_S)


def test_offset_is_zero_after_the_system_clock_was_stepped() -> None:
    t = FakeTime(5.0, TRUE_NOW_S - 3600)
    clock = t.clock()
    t.wall_s += 3600  # what the step did to the system clock
    clock.apply_offset(3600.0, "ntp", stepped=True)
    assert clock.offset_s == 0.0
    assert clock.last_step_s == 3600.0
    assert clock.wall_s() == pytest.approx(TRUE_NOW_S)


def test_pre_sync_event_is_restamped_from_monotonic_time_once_synced() -> None:
    t = FakeTime(100.0, 1000.0)
    clock = t.clock()
    event = clock.event_time()
    assert clock.resolve(event) is None  # not synced yet: no 1970 timestamps
    t.advance(50.0)
    clock.apply_offset(TRUE_NOW_S - t.wall_s, "ntp", stepped=False)
    # The event happened 50 s (monotonic) before the sync.
    assert clock.resolve(event) == datetime.fromtimestamp(TRUE_NOW_S - 50.0, UTC)


def test_unsynced_event_of_an_earlier_boot_resolves_to_none() -> None:
    t = FakeTime(100.0, TRUE_NOW_S)
    clock = t.clock(boot_id="this-boot")
    clock.apply_offset(0.0, "ntp", stepped=False)
    assert clock.resolve(EventTime("earlier-boot", 90.0, None)) is None
    stamped = EventTime("earlier-boot", 90.0, TRUE_NOW_S - 86400)
    assert clock.resolve(stamped) == datetime.fromtimestamp(TRUE_NOW_S - 86400, UTC)


def test_boot_id_is_the_kernel_boot_id_for_the_system_monotonic_clock() -> None:
    if not KERNEL_BOOT_ID_PATH.exists():
        pytest.skip("no /proc boot id on this system")
    assert Clock().boot_id == KERNEL_BOOT_ID_PATH.read_text().strip()
    assert Clock(monotonic=time.monotonic).boot_id == Clock().boot_id


def test_boot_id_is_random_per_clock_with_an_injected_monotonic_clock() -> None:
    a, b = FakeTime(1, 1).clock(), FakeTime(1, 1).clock()
    assert a.boot_id != b.boot_id


def test_iso8601_is_utc_with_milliseconds_and_z() -> None:
    assert Clock.iso8601(datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)) == "2026-11-24T10:00:00.123Z"
    assert Clock.iso8601(datetime(2026, 11, 24, 10, 0)) == "2026-11-24T10:00:00.000Z"  # naive = UTC
    cet = timezone(timedelta(hours=1))
    assert Clock.iso8601(datetime(2026, 11, 24, 11, 0, tzinfo=cet)) == "2026-11-24T10:00:00.000Z"


def test_status_json_shape() -> None:
    t = FakeTime(1.0, TRUE_NOW_S - 0.004)
    clock = t.clock()
    assert clock.to_json() == {"synced": False, "offset_s": None, "last_sync": None, "source": None}
    clock.apply_offset(0.004, "ntp", stepped=False)
    assert clock.to_json() == {"synced": True, "offset_s": 0.004, "last_sync": "2026-11-24T10:00:00Z",
                               "source": "ntp"}


def test_central_system_time_used_when_ntp_never_succeeded() -> None:
    t = FakeTime(1.0, 1000.0)
    clock = t.clock()
    assert clock.apply_central_time("2026-11-24T10:00:00.000Z")
    assert clock.sync_source == "central_system"
    assert clock.wall_s() == pytest.approx(TRUE_NOW_S)


def test_central_system_time_never_overrides_a_fresh_ntp_sync() -> None:
    t = FakeTime(1.0, TRUE_NOW_S)
    clock = t.clock(ntp_stale_after_s=3600)
    clock.apply_offset(0.002, "ntp", stepped=False)
    assert not clock.apply_central_time("2026-11-24T12:00:00Z")
    assert clock.offset_s == 0.002 and clock.sync_source == "ntp"
    t.advance(3601)  # NTP now stale: the central system's time is better than nothing
    assert clock.apply_central_time(datetime(2026, 11, 24, 11, 0, 5, tzinfo=UTC))
    assert clock.sync_source == "central_system"
    assert clock.now() == datetime(2026, 11, 24, 11, 0, 5, tzinfo=UTC)


def test_central_system_time_without_zone_is_utc() -> None:
    clock = FakeTime(1.0, 1000.0).clock()
    clock.apply_central_time("2026-11-24T10:00:00")
    assert clock.now() == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
