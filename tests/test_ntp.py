"""chargepoint.ntp.sync_clock against a real NTP responder over UDP on loopback.

The real system clock is never stepped here: set_clock=false, or an injected step function.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator

import pytest

from chargepoint.clock import Clock
from chargepoint.config import NtpSettings
from chargepoint.ntp import sync_clock
from tests.support.ntp_server import NtpServer

FAKE_OFFSET_S = 3600.0


@pytest.fixture
def ntp() -> Iterator[NtpServer]:
    with NtpServer(offset_s=FAKE_OFFSET_S) as server:
        yield server


def settings(*servers: NtpServer, set_clock: bool = False, timeout_s: float = 0.3,
             step_threshold_s: float = 0.5) -> NtpSettings:
    return NtpSettings(servers=tuple((s.host, s.port) for s in servers), set_clock=set_clock,
                       timeout_s=timeout_s, step_threshold_s=step_threshold_s)


class StepRecorder:
    def __init__(self, error: OSError | None = None) -> None:
        self.targets: list[float] = []
        self.error = error

    def __call__(self, target_s: float) -> None:
        self.targets.append(target_s)
        if self.error is not None:
            raise self.error


@pytest.mark.asyncio
async def test_offset_measured_matches_the_servers_offset(ntp: NtpServer) -> None:
    clock = Clock()
    step = StepRecorder()
    result = await sync_clock(clock, settings(ntp), step=step)
    assert result is not None
    assert result.offset_s == pytest.approx(FAKE_OFFSET_S, abs=0.5)
    assert (result.host, result.port, result.stratum, result.stepped) == (ntp.host, ntp.port, 2, False)
    assert clock.synced and clock.sync_source == "ntp"
    assert clock.offset_s == pytest.approx(FAKE_OFFSET_S, abs=0.5)
    assert clock.wall_s() == pytest.approx(time.time() + FAKE_OFFSET_S, abs=0.5)
    assert ntp.queries == 1


@pytest.mark.asyncio
async def test_no_answer_gives_none_and_leaves_the_clock_unsynced() -> None:
    with NtpServer(silent=True) as silent:
        clock = Clock()
        assert await sync_clock(clock, settings(silent, timeout_s=0.2)) is None
        assert not clock.synced and clock.offset_s is None
        assert silent.queries >= 1  # it was asked, it just did not answer


@pytest.mark.asyncio
async def test_second_server_used_when_the_first_is_silent(ntp: NtpServer) -> None:
    with NtpServer(silent=True) as silent:
        clock = Clock()
        result = await sync_clock(clock, settings(silent, ntp, timeout_s=0.2))
        assert result is not None and result.port == ntp.port
        assert silent.queries >= 1 and ntp.queries == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(("stratum", "leap"), [(0, 0), (16, 0), (2, 3)])
async def test_insane_answers_are_ignored_rfc5905(ntp: NtpServer, stratum: int, leap: int) -> None:
    with NtpServer(offset_s=-999.0, stratum=stratum, leap=leap) as insane:
        clock = Clock()
        result = await sync_clock(clock, settings(insane, ntp))
        assert insane.queries == 1
        assert result is not None and result.port == ntp.port
        assert clock.offset_s == pytest.approx(FAKE_OFFSET_S, abs=0.5)


@pytest.mark.asyncio
async def test_set_clock_false_never_steps_the_clock(ntp: NtpServer) -> None:
    step = StepRecorder()
    clock = Clock()
    result = await sync_clock(clock, settings(ntp, set_clock=False), step=step)
    assert result is not None and not result.stepped
    assert step.targets == []
    assert clock.offset_s == pytest.approx(FAKE_OFFSET_S, abs=0.5)


@pytest.mark.asyncio
async def test_set_clock_true_steps_to_the_right_target_and_offset_becomes_zero(ntp: NtpServer) -> None:
    step = StepRecorder()
    clock = Clock()
    before_s = time.time()
    result = await sync_clock(clock, settings(ntp, set_clock=True), step=step)
    after_s = time.time()
    assert result is not None and result.stepped
    assert len(step.targets) == 1
    assert before_s + FAKE_OFFSET_S - 0.5 <= step.targets[0] <= after_s + FAKE_OFFSET_S + 0.5
    assert clock.offset_s == 0.0 and clock.last_step_s == pytest.approx(FAKE_OFFSET_S, abs=0.5)


@pytest.mark.asyncio
async def test_small_offset_below_step_threshold_is_only_recorded() -> None:
    with NtpServer(offset_s=0.0) as ntp:
        step = StepRecorder()
        clock = Clock()
        result = await sync_clock(clock, settings(ntp, set_clock=True, step_threshold_s=0.5), step=step)
        assert result is not None and not result.stepped
        assert step.targets == []
        assert clock.synced and abs(clock.offset_s or 0.0) < 0.5


@pytest.mark.asyncio
async def test_step_denied_eperm_falls_back_to_keeping_the_offset(ntp: NtpServer) -> None:
    step = StepRecorder(PermissionError(errno.EPERM, "Operation not permitted"))
    clock = Clock()
    result = await sync_clock(clock, settings(ntp, set_clock=True), step=step)
    assert len(step.targets) == 1
    assert result is not None and not result.stepped
    assert clock.offset_s == pytest.approx(FAKE_OFFSET_S, abs=0.5)
    assert clock.wall_s() == pytest.approx(time.time() + FAKE_OFFSET_S, abs=0.5)
