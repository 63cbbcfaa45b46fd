"""The keyboard-wedge RFID reader against a real FIFO carrying packed input_event records.

A FIFO gives the reader the same interface as the kernel's evdev device: open
read-only non-blocking, watched by the event loop, read() returns whole records.
Only EVIOCGRAB (not a FIFO's ioctl) and ENODEV on unplug differ; both are covered.
"""

from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import logging
import os
import struct
import termios
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st

from chargepoint.config import ConfigError
from hal.linux import build_linux_board
from hal.linux.board import NoIdReader
from hal.linux.evdev import EV_KEY, EVENT_FORMAT, EVENT_SIZE, EvdevIdReader, KeyDecoder
from tests.hal.clock import FakeClock
from tests.hal.linux.test_board import make_tree, options

EV_SYN, EV_MSC, MSC_SCAN = 0, 4, 4
KEY_LEFTSHIFT, KEY_ENTER, KEY_KPENTER, KEY_G, KEY_MINUS = 42, 28, 96, 34, 12
CHAR_CODES = {"1": 2, "2": 3, "3": 4, "4": 5, "5": 6, "6": 7, "7": 8, "8": 9, "9": 10, "0": 11,
              "A": 30, "B": 48, "C": 46, "D": 32, "E": 18, "F": 33}
WAIT_S = 10.0   # a bound so a broken reader fails the test instead of hanging it


def event(kind: int, code: int, value: int) -> bytes:
    return struct.pack(EVENT_FORMAT, 1_700_000_000, 123_456, kind, code, value)


def press(code: int) -> bytes:
    """What a keyboard sends for one key stroke: scan code, down, sync, up, sync."""
    return (event(EV_MSC, MSC_SCAN, 0x70000 + code) + event(EV_KEY, code, 1) + event(EV_SYN, 0, 0)
            + event(EV_KEY, code, 0) + event(EV_SYN, 0, 0))


def typed(tag: str, *, enter: int = KEY_ENTER, shift_letters: bool = True) -> bytes:
    """A card as a keyboard-wedge reader types it: letters with shift held, then Enter."""
    out = b""
    for char in tag:
        if char.isalpha() and shift_letters:
            out += event(EV_KEY, KEY_LEFTSHIFT, 1) + press(CHAR_CODES[char]) + event(EV_KEY, KEY_LEFTSHIFT, 0)
        else:
            out += press(CHAR_CODES[char])
    return out + (press(enter) if enter else b"")


def test_record_size_is_the_platforms_input_event() -> None:
    # struct timeval (two longs) + __u16 + __u16 + __s32: 24 bytes on 64-bit, 16 on 32-bit ARM.
    assert EVENT_SIZE == 2 * struct.calcsize("l") + 8


# --------------------------------------------------------------------------- the pure decoder

HEX = "0123456789ABCDEF"


@given(st.text(alphabet=HEX, min_size=1, max_size=20), st.booleans(), st.data())
def test_any_tag_up_to_20_hex_chars_decodes_to_itself(tag: str, keypad_enter: bool, data: Any) -> None:
    raw = typed(tag, enter=KEY_KPENTER if keypad_enter else KEY_ENTER)
    # The bytes may arrive in two reads, split anywhere (even inside a record).
    cut = data.draw(st.integers(0, len(raw)))
    decoder = KeyDecoder()
    assert decoder.feed_bytes(raw[:cut], 10.0) + decoder.feed_bytes(raw[cut:], 10.0) == [tag]


@given(st.text(alphabet=HEX, min_size=21, max_size=60), st.text(alphabet=HEX, min_size=1, max_size=20))
def test_a_tag_over_20_chars_is_dropped_whole_and_the_next_one_reads(long_tag: str, tag: str) -> None:
    decoder = KeyDecoder()
    assert decoder.feed_bytes(typed(long_tag) + typed(tag), 10.0) == [tag]


def test_gap_discards_a_partial_tag_but_a_slow_card_within_the_gap_is_whole() -> None:
    decoder = KeyDecoder(gap_s=1.0)
    assert decoder.feed_bytes(typed("12", enter=0), 10.0) == []
    assert decoder.feed_bytes(typed("34"), 10.9) == ["1234"]
    assert decoder.feed_bytes(typed("56", enter=0), 20.0) == []
    assert decoder.feed_bytes(typed("78"), 21.1) == ["78"]


def test_enter_alone_is_no_tag() -> None:
    assert KeyDecoder().feed_bytes(press(KEY_ENTER) + press(KEY_KPENTER), 1.0) == []


# --------------------------------------------------------------------------- the reader on a FIFO


class Rig:
    def __init__(self, path: Path, clock: FakeClock) -> None:
        self.path = path
        self.clock = clock
        self.tags: asyncio.Queue[str] = asyncio.Queue()
        self.reader: EvdevIdReader | None = None
        self.wfd: int | None = None

    def start(self, **kwargs: Any) -> EvdevIdReader:
        kwargs.setdefault("grab", False)
        kwargs.setdefault("retry_s", 0.02)
        self.reader = EvdevIdReader(str(self.path), monotonic=self.clock, **kwargs)
        self.reader.set_listener(self.on_tag)
        return self.reader

    async def on_tag(self, tag: str) -> None:
        await self.tags.put(tag)

    def open_writer(self) -> None:
        # Non-blocking open of a FIFO's write end succeeds only once a reader has it open.
        self.wfd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)

    async def open_writer_when_read(self) -> None:
        """Block (in a thread) until the reader has (re)opened the FIFO."""
        self.wfd = await asyncio.to_thread(os.open, self.path, os.O_WRONLY)

    def close_writer(self) -> None:
        assert self.wfd is not None
        os.close(self.wfd)
        self.wfd = None

    def write(self, data: bytes) -> None:
        assert self.wfd is not None
        assert os.write(self.wfd, data) == len(data)

    async def drained(self) -> None:
        """Until the reader has read everything written (its callback decodes what it reads)."""
        assert self.wfd is not None
        pending = array.array("i", [0])

        async def empty() -> None:
            while True:
                fcntl.ioctl(self.wfd, termios.FIONREAD, pending)
                if pending[0] == 0:
                    return
                await asyncio.sleep(0.005)

        await asyncio.wait_for(empty(), WAIT_S)

    async def next_tag(self) -> str:
        return await asyncio.wait_for(self.tags.get(), WAIT_S)

    async def no_more_tags(self) -> None:
        await self.drained()
        await asyncio.sleep(0)   # let a scheduled listener task run
        assert self.tags.empty(), self.tags.get_nowait()


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    path = tmp_path / "event-kbd"
    os.mkfifo(path)
    rig = Rig(path, FakeClock())
    yield rig
    if rig.reader is not None:
        await rig.reader.close()
    if rig.wfd is not None:
        os.close(rig.wfd)


@pytest.mark.asyncio
async def test_one_card(rig: Rig) -> None:
    rig.start()
    rig.open_writer()
    rig.write(typed("04A2B3C4D5E6F7"))
    assert await rig.next_tag() == "04A2B3C4D5E6F7"
    await rig.no_more_tags()


@pytest.mark.asyncio
async def test_two_cards_back_to_back_in_one_write(rig: Rig) -> None:
    rig.start()
    rig.open_writer()
    rig.write(typed("11223344") + typed("0012345678", enter=KEY_KPENTER))
    assert [await rig.next_tag(), await rig.next_tag()] == ["11223344", "0012345678"]
    await rig.no_more_tags()


@pytest.mark.asyncio
async def test_shift_releases_repeats_and_other_keys_are_ignored(rig: Rig) -> None:
    rig.start()
    rig.open_writer()
    noise = (event(EV_KEY, CHAR_CODES["7"], 2)          # auto-repeat of a held key: no second 7
             + event(EV_KEY, CHAR_CODES["9"], 0)        # a release without a press
             + press(KEY_G) + press(KEY_MINUS))          # not a hex digit
    rig.write(typed("A7", enter=0) + noise + typed("B"))
    assert await rig.next_tag() == "A7B"
    await rig.no_more_tags()


@pytest.mark.asyncio
async def test_an_over_long_tag_is_dropped_and_20_chars_pass(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.start()
    rig.open_writer()
    rig.write(typed("1" * 21) + typed("F" * 20))
    assert await rig.next_tag() == "F" * 20
    await rig.no_more_tags()
    assert any("longer than 20" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.mark.asyncio
async def test_a_partial_tag_then_a_gap_then_a_full_tag_gives_only_the_full_tag(rig: Rig) -> None:
    rig.start(gap_s=1.0)
    rig.open_writer()
    raw = typed("99887766", enter=0)
    rig.write(raw[:EVENT_SIZE * 14])           # half a card
    await rig.drained()
    rig.clock.advance(1.5)
    rig.write(typed("CAFE"))
    assert await rig.next_tag() == "CAFE"
    await rig.no_more_tags()


@pytest.mark.asyncio
async def test_a_card_split_across_reads_within_the_gap_is_whole(rig: Rig) -> None:
    rig.start(gap_s=1.0)
    rig.open_writer()
    raw = typed("12345678")
    rig.write(raw[:EVENT_SIZE * 9 + 3])
    await rig.drained()
    rig.clock.advance(0.5)
    rig.write(raw[EVENT_SIZE * 9 + 3:])
    assert await rig.next_tag() == "12345678"


@pytest.mark.asyncio
async def test_writer_closing_and_reopening_is_survived(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chargepoint.hal.linux.rfid")
    reader = rig.start()
    rig.open_writer()
    rig.write(typed("1111"))
    assert await rig.next_tag() == "1111"
    rig.write(typed("2222", enter=0))            # half a card, then the device goes away
    await rig.drained()
    rig.close_writer()                            # the reader sees end of file
    await asyncio.wait_for(_until(lambda: not reader.is_open), WAIT_S)
    await rig.open_writer_when_read()             # returns once the reader reopened the FIFO
    rig.write(typed("3333"))
    assert await rig.next_tag() == "3333"         # not "22223333"
    assert reader.is_open
    messages = [r.getMessage() for r in caplog.records if r.name == "chargepoint.hal.linux.rfid"]
    assert any("end of file" in m for m in messages) and any("is back" in m for m in messages)


@pytest.mark.asyncio
async def test_device_missing_at_start_is_retried_and_logged_once(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "later"
    rig = Rig(path, FakeClock())
    reader = rig.start()
    assert not reader.is_open
    await asyncio.sleep(0.2)                      # several retries (every 0.02 s) fail
    os.mkfifo(path)
    await rig.open_writer_when_read()
    try:
        rig.write(typed("ABCD"))
        assert await rig.next_tag() == "ABCD"
    finally:
        await reader.close()
        rig.close_writer()
    losses = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(losses) == 1


@pytest.mark.asyncio
async def test_enodev_on_unplug_closes_and_reopens(rig: Rig, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    reader = rig.start()
    rig.open_writer()
    real_read: Callable[[int, int], bytes] = os.read
    unplugged = [True]

    def read(fd: int, n: int) -> bytes:
        # What the kernel answers on the event device of a USB reader that was pulled out.
        if unplugged[0] and fd == reader._fd:
            unplugged[0] = False
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", read)
    rig.write(typed("5555"))                      # wakes the reader, whose read fails
    await asyncio.wait_for(_until(lambda: not unplugged[0]), WAIT_S)
    assert not reader.is_open
    await asyncio.wait_for(_until(lambda: reader.is_open), WAIT_S)
    rig.write(typed("6666"))
    # Unlike a real device, the FIFO kept the unread first card for the reopened reader.
    assert [await rig.next_tag(), await rig.next_tag()] == ["5555", "6666"]
    assert any("unplugged" in r.getMessage() for r in caplog.records)


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 - polls the reader's state, changed by loop callbacks
        await asyncio.sleep(0.005)


@pytest.mark.asyncio
async def test_a_plain_function_listener_and_a_failing_one(rig: Rig) -> None:
    got: list[str] = []

    def listener(tag: str) -> None:
        got.append(tag)
        if tag == "BAD":
            raise RuntimeError("listener bug")

    reader = EvdevIdReader(str(rig.path), grab=False, monotonic=rig.clock)
    rig.reader = reader
    reader.set_listener(listener)
    rig.open_writer()
    rig.write(typed("BAD") + typed("600D"))
    await asyncio.wait_for(_until(lambda: len(got) == 2), WAIT_S)
    assert got == ["BAD", "600D"]


@pytest.mark.asyncio
async def test_close_stops_reading_and_retrying(rig: Rig) -> None:
    reader = rig.start()
    rig.open_writer()
    await reader.close()
    assert not reader.is_open
    reader.set_listener(rig.on_tag)               # a closed reader does not reopen
    assert not reader.is_open


# --------------------------------------------------------------------------- configuration


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    make_tree(tmp_path)
    (tmp_path / "dev/input/by-id").mkdir(parents=True)
    os.mkfifo(tmp_path / "dev/input/by-id/usb-reader-event-kbd")
    yield tmp_path


@pytest.mark.asyncio
async def test_board_reads_cards_from_the_configured_device(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    opts = options(tree) | {"rfid_device": "/dev/input/by-id/usb-reader-event-kbd"}
    board = build_linux_board(opts, [3], ["wifi"])
    assert isinstance(board.id_reader, EvdevIdReader)
    tags: asyncio.Queue[str] = asyncio.Queue()
    board.id_reader.set_listener(tags.put_nowait)
    wfd = os.open(tree / "dev/input/by-id/usb-reader-event-kbd", os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(wfd, typed("DEADBEEF"))
        assert await asyncio.wait_for(tags.get(), WAIT_S) == "DEADBEEF"
        # A FIFO refuses EVIOCGRAB: logged, and the reader works without it.
        assert any("grab failed" in r.getMessage() for r in caplog.records)
        await board.close()
        assert not board.id_reader.is_open
    finally:
        os.close(wfd)


def test_without_rfid_device_there_is_no_reader(tree: Path) -> None:
    assert isinstance(build_linux_board(options(tree), [3], ["wifi"]).id_reader, NoIdReader)


@pytest.mark.parametrize(("change", "key"), [
    ({"rfid_device": 5}, "hal.rfid_device"),
    ({"rfid_device": ""}, "hal.rfid_device"),
    ({"rfid_device": "/dev/input/x", "rfid_grab": "yes"}, "hal.rfid_grab"),
])
def test_rfid_configuration_errors_name_the_key(tree: Path, change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_linux_board(options(tree) | change, [3], ["wifi"])
    assert info.value.key == key


def test_set_listener_outside_the_event_loop_says_why(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="running event loop"):
        EvdevIdReader(str(tmp_path / "x")).set_listener(lambda tag: None)
