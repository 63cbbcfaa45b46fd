"""chargepoint.ntp.sync_clock against a real NTP responder over UDP on loopback.

The real system clock is never stepped here: set_clock=false, or an injected step function.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import time
from collections.abc import Iterator

import pytest

from chargepoint import ntp as ntp_module
from chargepoint.clock import Clock
from chargepoint.config import NtpSettings
from chargepoint.ntp import keep_clock_synced, sync_clock
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



@pytest.mark.asyncio
async def test_keep_clock_synced_follows_the_server_without_a_reconnect(ntp: NtpServer) -> None:
    """A charger connected for months re-queries NTP every resync_interval_s (real UDP exchange)."""
    clock = Clock()
    periodic = dataclasses.replace(settings(ntp), resync_interval_s=0.05)
    task = asyncio.ensure_future(keep_clock_synced(clock, periodic))
    try:
        for target_s in (FAKE_OFFSET_S, -120.0):
            ntp.offset_s = target_s
            for _ in range(400):
                if clock.synced and abs(clock.offset_s - target_s) < 0.5:
                    break
                await asyncio.sleep(0.05)
            assert clock.offset_s == pytest.approx(target_s, abs=0.5)
    finally:
        task.cancel()


class CountingSync:
    def __init__(self, answers: bool) -> None:
        self.answers, self.rounds = answers, 0

    async def __call__(self, clock: Clock, s: NtpSettings) -> object:
        self.rounds += 1
        return object() if self.answers else None


@pytest.mark.asyncio
async def test_a_failed_round_is_retried_sooner_than_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ntp_module, "RESYNC_RETRY_S", 0.01)
    periodic = dataclasses.replace(settings(), resync_interval_s=0.3)
    failing, answering = CountingSync(answers=False), CountingSync(answers=True)
    tasks = [asyncio.ensure_future(keep_clock_synced(Clock(), periodic, sync=s)) for s in (failing, answering)]
    await asyncio.sleep(1.0)
    for task in tasks:
        task.cancel()
    # Answered: one round per interval (at most 3 in 1 s). Unanswered: retried every 10 ms.
    assert answering.rounds <= 3
    assert failing.rounds > 3 * answering.rounds


@pytest.mark.asyncio
async def test_resync_interval_zero_never_queries() -> None:
    sync = CountingSync(answers=True)
    await keep_clock_synced(Clock(), dataclasses.replace(settings(), resync_interval_s=0), sync=sync)
    assert sync.rounds == 0
