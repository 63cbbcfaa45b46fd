"""Helpers of services/firmware.py: file names, upload URLs, the default installer, the log
ring buffer and its time window, transfers against a real HTTP server on loopback."""

from __future__ import annotations

import datetime as dt
import io
import logging
import zipfile
from pathlib import Path

import pytest

from chargepoint.services.firmware import (
    InstallError,
    LogLine,
    LogRing,
    TransferError,
    default_installer,
    download,
    firmware_file_name,
    format_log_lines,
    make_opener,
    parse_datetime_s,
    safe_url,
    upload,
    upload_url,
    version_from_file_name,
)
from tests.e2e.http_files import FileServer, firmware_tar_gz


def test_upload_url_treats_location_as_a_directory_unless_it_is_a_presigned_url() -> None:
    """§6.25: location is the directory the file goes to."""
    assert upload_url("http://h/d/", "f.tar.gz") == "http://h/d/f.tar.gz"
    assert upload_url("http://h/d", "f.tar.gz") == "http://h/d/f.tar.gz"
    assert upload_url("https://h/obj?X-Sig=1", "f.tar.gz") == "https://h/obj?X-Sig=1"


def test_file_names_and_versions() -> None:
    assert firmware_file_name("https://h/fw/chargepoint-1.2.0.tar.gz?token=1") == "chargepoint-1.2.0.tar.gz"
    assert firmware_file_name("https://h/") == "firmware.bin"
    assert firmware_file_name("https://h/a b;c") == "a_b_c"
    assert version_from_file_name("chargepoint-1.2.0.tar.gz") == "chargepoint-1.2.0"
    assert version_from_file_name("chargepoint-1.2.0-py3-none-any.whl") == "chargepoint-1.2.0-py3-none-any"
    assert version_from_file_name("image.bin") == "image"


def test_credentials_are_never_logged_with_a_url() -> None:
    assert safe_url("ftp://user:secret@host:21/fw.bin") == "ftp://***@host:21/fw.bin"
    assert safe_url("https://host/fw.bin") == "https://host/fw.bin"


def test_default_installer_accepts_a_tar_gz_and_a_wheel_and_refuses_anything_else(tmp_path: Path) -> None:
    tar = tmp_path / "chargepoint-2.0.0.tar.gz"
    tar.write_bytes(firmware_tar_gz())
    assert default_installer(tar) == "chargepoint-2.0.0"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("chargepoint/__init__.py", "")
    wheel = tmp_path / "chargepoint-2.0.0-py3-none-any.whl"
    wheel.write_bytes(buffer.getvalue())
    assert default_installer(wheel) == "chargepoint-2.0.0-py3-none-any"
    for name, data in (("x.tar.gz", b"garbage"), ("x.whl", b"garbage"), ("x.tar.gz", firmware_tar_gz()[:40])):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InstallError):
            default_installer(path)


def test_date_times_beyond_what_datetime_holds_are_clamped_not_an_error() -> None:
    """A retrieveDate / startTime that is valid RFC 3339 but whose UTC instant datetime cannot
    hold is the nearest representable instant (schemas.parse_date_time), not a ValueError.
    UpdateFirmware with "9999-12-31T23:59:59-01:00" was answered InternalError (schema fuzz)."""
    end_s = dt.datetime.max.replace(tzinfo=dt.UTC).timestamp()
    start_s = dt.datetime.min.replace(tzinfo=dt.UTC).timestamp()
    assert parse_datetime_s("9999-12-31T23:59:59-01:00") == end_s
    assert parse_datetime_s("9999-12-31T23:59:59.999999Z") == end_s
    assert parse_datetime_s("0001-01-01T00:00:00+01:00") == start_s
    assert parse_datetime_s("2026-11-24T10:00:00+01:00") == dt.datetime(2026, 11, 24, 9, tzinfo=dt.UTC).timestamp()
    assert parse_datetime_s("2026-11-24T10:00:00") == dt.datetime(2026, 11, 24, 10, tzinfo=dt.UTC).timestamp()
    assert parse_datetime_s("yesterday") is None
    assert parse_datetime_s(None) is None


def test_log_ring_keeps_info_and_above_and_the_window_selects_by_wall_time() -> None:
    ring = LogRing(capacity=3)
    logger = logging.getLogger("chargepoint.test.ring")
    logger.addHandler(ring)
    logger.setLevel(logging.DEBUG)
    try:
        logger.debug("frame dump")            # DEBUG (frames) never reaches the diagnostics
        for i in range(4):
            logger.info("line %d", i)
    finally:
        logger.removeHandler(ring)
        logger.setLevel(logging.NOTSET)
    assert [line.message for line in ring.lines()] == ["line 1", "line 2", "line 3"]
    lines = [LogLine(1000.0, "INFO", "a", "early"), LogLine(2000.0, "WARNING", "b", "late")]
    text = format_log_lines(lines, offset_s=10.0, start_s=1500.0)
    assert text == "1970-01-01T00:33:30.000Z WARNING b: late\n"
    assert format_log_lines(lines, offset_s=0.0, stop_s=500.0) == ""


def test_download_is_complete_or_absent_and_ignores_proxy_variables(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """field-notes §1: no silent proxy from the environment."""
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    opener = make_opener(None)
    with FileServer() as files:
        files.files["/fw.bin"] = b"x" * 200_000
        dest = tmp_path / "fw.bin"
        assert download(files.url("/fw.bin"), dest, opener=opener) == 200_000
        assert dest.read_bytes() == files.files["/fw.bin"]
        with pytest.raises(TransferError, match="HTTP 404"):
            download(files.url("/missing"), tmp_path / "missing", opener=opener)
        with pytest.raises(TransferError, match="larger than"):
            download(files.url("/fw.bin"), tmp_path / "big", opener=opener, max_bytes=1000)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["fw.bin"]
        with pytest.raises(TransferError, match="unsupported protocol"):
            download("file:///etc/passwd", tmp_path / "passwd", opener=opener)
        upload(files.url("/up/f.txt"), b"data", opener=opener)
        assert files.uploads["/up/f.txt"] == b"data"
        with pytest.raises(TransferError, match="unsupported protocol"):
            upload("ftp://127.0.0.1/up", b"data", opener=opener)
