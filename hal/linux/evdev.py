"""RFID card reader on a Linux input device: a USB "keyboard wedge".

Most card readers on Linux chargers enumerate as a USB keyboard: the kernel
exposes them as an evdev character device (/dev/input/by-id/usb-...-event-kbd)
and each card arrives as a burst of key presses, the UID as hex or decimal
digits, ended by Enter. The tag is passed on as typed (hex letters upper-case):
OCPP 1.6 §3.9 (ID Tokens) recommends the hex UID, byte 0 first, which is what most
readers type; a reader set to decimal gives decimal tags, and the central system's
card list has to use the same form. No conversion here: the byte order a decimal
reader used cannot be known from its digits.

Two parts: `KeyDecoder`, pure (records and a time in, finished tags out), and
`EvdevIdReader`, which reads the device from the asyncio loop (`loop.add_reader`,
no thread, no polling) and reopens it after a USB unplug.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import inspect
import logging
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from hal.interfaces import IdTagListener

log = logging.getLogger("chargepoint.hal.linux.rfid")

# struct input_event (linux/input.h): struct timeval (two longs) + __u16 type + __u16 code
# + __s32 value. 24 bytes on 64-bit, 16 on 32-bit ARM; the native "l" follows the platform.
EVENT_FORMAT = "llHHi"
EVENT_SIZE = struct.calcsize(EVENT_FORMAT)

# linux/input-event-codes.h
EV_KEY = 0x01
KEY_UP, KEY_DOWN, KEY_REPEAT = 0, 1, 2
KEY_ENTER = 28
KEY_KPENTER = 96
KEY_CODES: dict[int, str] = {
    2: "1", 3: "2", 4: "3", 5: "4", 6: "5", 7: "6", 8: "7", 9: "8", 10: "9", 11: "0",
    30: "A", 48: "B", 46: "C", 32: "D", 18: "E", 33: "F",
    # Keypad digits: some readers type on the numeric keypad.
    82: "0", 79: "1", 80: "2", 81: "3", 75: "4", 76: "5", 77: "6", 71: "7", 72: "8", 73: "9",
}
END_CODES = frozenset({KEY_ENTER, KEY_KPENTER})

# _IOW('E', 0x90, int): exclusive access, the digits do not also reach a console or a getty.
EVIOCGRAB = 0x40044590

MAX_TAG_CHARS = 20          # OCPP 1.6 §7.28 IdToken: CiString20Type
DEFAULT_GAP_S = 1.0         # a reader types a whole UID within ~0.1 s
DEFAULT_RETRY_S = 5.0


class KeyDecoder:
    """Key events -> tags. Pure: the caller passes the time of each batch.

    Only key-down events (value 1) of the digit / A-F keys count; Enter or keypad
    Enter ends a tag. Releases, auto-repeats, shift and every other key are ignored.
    A tag longer than MAX_TAG_CHARS is dropped whole (a warning), never truncated:
    a truncated UID could be somebody else's card. Characters older than `gap_s`
    when the next key comes are a half-read card and are discarded, so they never
    prefix the next card.
    """

    def __init__(self, *, gap_s: float = DEFAULT_GAP_S, max_chars: int = MAX_TAG_CHARS) -> None:
        self.gap_s = gap_s
        self.max_chars = max_chars
        self._chars: list[str] = []
        self._overflow = False
        self._last_key_s: float | None = None
        self._tail = b""

    def reset(self) -> None:
        """Forget a partial tag (the device went away)."""
        if self._chars or self._overflow:
            log.warning("RFID: partial card read discarded (%d characters)", len(self._chars))
        self._chars.clear()
        self._overflow = False
        self._last_key_s = None
        self._tail = b""

    def feed_bytes(self, data: bytes, now_s: float) -> list[str]:
        """Raw input_event records as read from the device (a record may span two reads)."""
        data = self._tail + data
        whole = len(data) - len(data) % EVENT_SIZE
        self._tail = data[whole:]
        tags: list[str] = []
        for _sec, _usec, kind, code, value in struct.iter_unpack(EVENT_FORMAT, data[:whole]):
            tag = self.feed(kind, code, value, now_s)
            if tag is not None:
                tags.append(tag)
        return tags

    def feed(self, kind: int, code: int, value: int, now_s: float) -> str | None:
        """One event; returns a finished tag, or None."""
        if kind != EV_KEY or value != KEY_DOWN:
            return None
        if code not in KEY_CODES and code not in END_CODES:
            return None
        if (self._last_key_s is not None and now_s - self._last_key_s > self.gap_s
                and (self._chars or self._overflow)):
            log.warning("RFID: partial card read discarded after %.1f s without keys (%d characters)",
                        now_s - self._last_key_s, len(self._chars))
            self._chars.clear()
            self._overflow = False
        self._last_key_s = now_s
        if code in END_CODES:
            tag, overflow = "".join(self._chars), self._overflow
            self._chars.clear()
            self._overflow = False
            if overflow:
                log.warning("RFID: card ignored: its id is longer than %d characters (OCPP 1.6 §7.28 "
                            "CiString20); check the reader's output format", self.max_chars)
                return None
            return tag or None
        if not self._overflow:
            self._chars.append(KEY_CODES[code])
            if len(self._chars) > self.max_chars:
                self._chars.clear()
                self._overflow = True   # swallow the rest of this card up to its Enter
        return None


class EvdevIdReader:
    """IdentificationReader on an evdev keyboard-wedge reader.

    The device is opened when the listener is set (that must happen in the running
    event loop: the daemon sets it while building its services) and watched with
    `loop.add_reader`. A read error (ENODEV when the USB reader is unplugged) or an
    end of file closes it; it is reopened every `retry_s` until it is back. A device
    missing at start is retried the same way. Each loss is logged once.
    """

    def __init__(self, path: str, *, grab: bool = True, gap_s: float = DEFAULT_GAP_S,
                 retry_s: float = DEFAULT_RETRY_S, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._grab = grab
        self._retry_s = retry_s
        self._monotonic = monotonic
        self._decoder = KeyDecoder(gap_s=gap_s)
        self._listener: IdTagListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._lost = False            # a loss was logged; log the recovery, not every retry
        self._grab_warned = False
        self._closed = False
        self._tasks: set[asyncio.Future[Any]] = set()

    # ----------------------------------------------------------------- IdentificationReader

    def set_listener(self, listener: IdTagListener) -> None:
        self._listener = listener
        if self._loop is None and not self._closed:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError("EvdevIdReader.set_listener must be called from the running event loop "
                                   "(it watches the device with loop.add_reader)") from None
            self._open()

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    async def close(self) -> None:
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._close_fd()
        for task in list(self._tasks):
            task.cancel()

    # ----------------------------------------------------------------- device

    def _open(self) -> None:
        self._retry = None
        if self._closed:
            return
        assert self._loop is not None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            self._lose(f"cannot open: {exc.strerror or exc}")
            return
        if self._grab:
            try:
                fcntl.ioctl(fd, EVIOCGRAB, 1)
            except OSError as exc:
                if not self._grab_warned:   # best effort: the reader still works, only not exclusively
                    log.warning("RFID reader %s: exclusive grab failed (%s); its digits may also reach "
                                "a console", self.path, exc.strerror or exc)
                    self._grab_warned = True
        try:
            self._loop.add_reader(fd, self._on_readable)
        except (OSError, ValueError) as exc:   # e.g. a regular file: epoll refuses it
            os.close(fd)
            self._lose(f"cannot watch: {exc}")
            return
        self._fd = fd
        if self._lost:
            log.info("RFID reader %s is back", self.path)
            self._lost = False
        else:
            log.info("RFID reader on %s", self.path)

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, EVENT_SIZE * 64)
        except BlockingIOError:
            return
        except OSError as exc:
            reason = "device gone (unplugged?)" if exc.errno == errno.ENODEV else (exc.strerror or str(exc))
            self._close_fd()
            self._lose(reason)
            return
        if not data:
            self._close_fd()
            self._lose("end of file")
            return
        for tag in self._decoder.feed_bytes(data, self._monotonic()):
            self._deliver(tag)

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(fd)
        os.close(fd)
        self._decoder.reset()

    def _lose(self, reason: str) -> None:
        if not self._lost:
            log.warning("RFID reader %s: %s; retrying every %g s", self.path, reason, self._retry_s)
            self._lost = True
        if not self._closed and self._loop is not None:
            self._retry = self._loop.call_later(self._retry_s, self._open)

    # ----------------------------------------------------------------- delivery

    def _deliver(self, tag: str) -> None:
        log.debug("RFID: card %s read", tag)   # the transactions service logs what it does with it
        listener = self._listener
        if listener is None:
            return
        try:
            result = listener(tag)
        except Exception:
            log.exception("RFID: listener failed for card %s", tag)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("RFID: listener failed", exc_info=task.exception())
