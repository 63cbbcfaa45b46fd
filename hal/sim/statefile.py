"""Power-cut safe JSON file: write a temporary, fsync, rename over, fsync the directory."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("chargepoint.hal.sim")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replace path with data so that a reader (or a power cut) sees the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = json.dumps(data, sort_keys=True, indent=1).encode("utf-8")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    # The rename itself is only durable once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: Path) -> dict[str, Any] | None:
    """The stored object, or None when absent or unreadable (logged: the hardware then starts fresh)."""
    try:
        with path.open("rb") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("sim hardware state %s unreadable (%s); starting fresh", path, exc)
        return None
    if not isinstance(data, dict):
        log.warning("sim hardware state %s is not an object; starting fresh", path)
        return None
    return data
