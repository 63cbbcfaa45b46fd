"""NTP before every TLS handshake (interfaces.md section 4), and every few hours.

The certificate check needs a correct clock (ev.energy requirements; Security WP
A00.FR.307), so the link manager calls `sync_clock` before each connection attempt.
A charger can stay connected for months, so `keep_clock_synced` also re-queries every
`[ntp] resync_interval_s` while running: OCPP timestamps (meter values, transaction
times) stay on NTP time rather than on the board's drifting oscillator.
ntplib is blocking: each query runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import ntplib

from chargepoint.clock import SOURCE_NTP, Clock
from chargepoint.config import NtpSettings

log = logging.getLogger("chargepoint.ntp")

StepFunction = Callable[[float], None]  # sets the system clock to this many seconds since the epoch
QueryFunction = Callable[[str, int, float], "ntplib.NTPStats"]
SyncFunction = Callable[[Clock, NtpSettings], Awaitable["NtpResult | None"]]

# After a periodic sync found no server, try again this soon rather than a full interval.
RESYNC_RETRY_S = 300.0


@dataclass(frozen=True)
class NtpResult:
    host: str
    port: int
    offset_s: float      # true time minus system time, as measured
    delay_s: float       # round trip
    stratum: int
    stepped: bool        # the system clock was stepped by offset_s


def step_system_clock(target_s: float) -> None:
    time.clock_settime(time.CLOCK_REALTIME, target_s)


def query_ntp(host: str, port: int, timeout_s: float) -> ntplib.NTPStats:
    return ntplib.NTPClient().request(host, version=4, port=port, timeout=timeout_s)


def answer_problem(stats: ntplib.NTPStats) -> str | None:
    """Why an answer must not be trusted, or None when it is sane (RFC 5905 §7.3)."""
    if not 1 <= stats.stratum <= 15:
        return f"stratum {stats.stratum}"  # 0 = kiss-o'-death / unsynchronised, 16 = unsynchronised
    if stats.leap == 3:
        return "leap indicator 3 (server clock not synchronised)"
    if not math.isfinite(stats.offset) or not math.isfinite(stats.delay):
        return "offset not finite"
    return None


_step_denied_logged = False


async def sync_clock(clock: Clock, settings: NtpSettings, *,
                     step: StepFunction = step_system_clock,
                     query: QueryFunction = query_ntp) -> NtpResult | None:
    """Query the servers in order; the first sane answer wins and its offset is recorded
    in `clock`. Returns None when no server answered sanely (the clock is left as it was)."""
    global _step_denied_logged
    for host, port in settings.servers:
        try:
            stats = await asyncio.to_thread(query, host, port, settings.timeout_s)
        except (ntplib.NTPException, OSError) as exc:
            log.info("ntp: no answer from %s:%d (%s)", host, port, exc or type(exc).__name__)
            continue
        problem = answer_problem(stats)
        if problem is not None:
            log.warning("ntp: ignoring answer from %s:%d: %s", host, port, problem)
            continue
        offset_s = float(stats.offset)
        stepped = False
        if settings.set_clock and abs(offset_s) > settings.step_threshold_s:
            try:
                step(clock.system_s() + offset_s)
                stepped = True
            except OSError as exc:
                # Behave like set_clock=false: keep the offset. EPERM (no CAP_SYS_TIME) fails
                # the same way before every handshake, so it is logged once.
                denied = isinstance(exc, PermissionError)
                if not (denied and _step_denied_logged):
                    log.warning("ntp: cannot step the system clock (%s); keeping the offset instead",
                                errno.errorcode.get(exc.errno or 0, str(exc)))
                _step_denied_logged = _step_denied_logged or denied
        clock.apply_offset(offset_s, SOURCE_NTP, stepped=stepped)
        log.info("ntp: offset %+.3f s from %s:%d (stratum %d, delay %.3f s)%s",
                 offset_s, host, port, stats.stratum, stats.delay, ", clock stepped" if stepped else "")
        return NtpResult(host, port, offset_s, float(stats.delay), int(stats.stratum), stepped)
    return None


async def keep_clock_synced(clock: Clock, settings: NtpSettings, *,
                            sync: SyncFunction | None = None) -> None:
    """Re-synchronise every `settings.resync_interval_s` for as long as it runs (0: never).

    A failed round is retried after RESYNC_RETRY_S (or the interval, if shorter); the clock
    keeps its last offset meanwhile, and the central system's currentTime takes over once
    that is stale (Clock.apply_central_time)."""
    interval_s = settings.resync_interval_s
    if interval_s <= 0:
        return
    do_sync = sync or (lambda c, s: sync_clock(c, s))
    wait_s = interval_s
    while True:
        await asyncio.sleep(wait_s)
        result = await do_sync(clock, settings)
        wait_s = interval_s if result is not None else min(interval_s, RESYNC_RETRY_S)
