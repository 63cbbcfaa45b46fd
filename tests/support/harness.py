"""End-to-end harness: the charger (in-process or as a real daemon process) against the
bundled central system over wss on loopback, with a real NTP responder over UDP.

    async with charger_env(tmp_path) as env:          # CSMS + NTP + settings
        async with env.app() as app:                  # the ChargePointApp, started
            await env.csms.wait_for("BootNotification")
            env.sim("sim.plug", connector=1)          # drive the simulated hardware

    with env.daemon() as proc: ...                    # `python -m chargepoint run` subprocess
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chargepoint.app import ChargePointApp
from chargepoint.config import Settings, parse_settings
from chargepoint.csms.server import CentralSystem
from tests.support.ntp_server import NtpServer

CP_ID = "CP-TEST-1"
PASSWORD = "0123456789abcdef0123"
REPO_ROOT = Path(__file__).resolve().parents[2]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def to_toml(doc: dict[str, Any]) -> str:
    """A tiny TOML writer for the configuration documents the tests build."""
    lines: list[str] = []

    def table(prefix: str, t: dict[str, Any]) -> None:
        scalars = {k: v for k, v in t.items() if not isinstance(v, dict) and not _is_table_list(v)}
        if prefix:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {toml_value(v)}")
        lines.append("")
        for k, v in t.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)
            elif _is_table_list(v):
                for item in v:
                    lines.append(f"[[{prefix + '.' if prefix else ''}{k}]]")
                    for ik, iv in item.items():
                        lines.append(f"{ik} = {toml_value(iv)}")
                    lines.append("")

    table("", doc)
    return "\n".join(lines)


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


@dataclass
class ChargerEnv:
    tmp_path: Path
    csms: CentralSystem
    ntp: NtpServer
    doc: dict[str, Any]
    apps: list[ChargePointApp] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return Path(self.doc["storage"]["state_dir"])

    @property
    def socket_path(self) -> Path:
        return Path(self.doc["control"]["socket"])

    def settings(self) -> Settings:
        return parse_settings(self.doc, self.config_path)

    @property
    def config_path(self) -> Path:
        path = self.tmp_path / "chargepoint.toml"
        path.write_text(to_toml(self.doc))
        return path

    @contextlib.asynccontextmanager
    async def app(self, **kwargs: Any) -> AsyncIterator[ChargePointApp]:
        app = ChargePointApp(self.settings(), validate_outbound=True, **kwargs)
        self.apps.append(app)
        await app.start()
        try:
            yield app
        finally:
            await app.stop()

    def sim(self, cmd: str, **params: Any) -> dict[str, Any]:
        """Send a control-socket command to the running charger (in-process or daemon)."""
        from chargepoint.control import request

        return request(self.socket_path, {"cmd": cmd, **params})

    async def asim(self, cmd: str, **params: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.sim, cmd, **params)

    def status(self) -> dict[str, Any]:
        response = self.sim("status")
        assert response["ok"], response
        result: dict[str, Any] = response["result"]
        return result

    async def astatus(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.status)

    @contextlib.contextmanager
    def daemon(self, *, env: dict[str, str] | None = None) -> Iterator[DaemonProcess]:
        proc = DaemonProcess(self.config_path, self.tmp_path / "daemon.log", env=env)
        proc.start()
        try:
            yield proc
        finally:
            proc.terminate()


class DaemonProcess:
    """`python -m chargepoint run --config FILE` as a real process (for kill tests)."""

    def __init__(self, config_path: Path, log_path: Path, *, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.env.pop("NOTIFY_SOCKET", None)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chargepoint", "run", "--config", str(self.config_path)],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()

    def kill(self) -> None:
        """Power cut: SIGKILL, no chance to clean up."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            return None

    def restart(self) -> None:
        self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_socket(self, socket_path: Path, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if socket_path.exists():
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.05)
        raise AssertionError(f"control socket did not appear:\n{self.log_text()}")


def base_doc(tmp_path: Path, csms: CentralSystem, ntp: NtpServer, **ocpp_config: Any) -> dict[str, Any]:
    config = {"HeartbeatInterval": 300, "MeterValueSampleInterval": 0, "WebSocketPingInterval": 5,
              "TransactionMessageRetryInterval": 1, "MinimumStatusDuration": 0}
    config.update(ocpp_config)
    return {
        "ocpp": {"url": csms.url, "charge_point_id": CP_ID, "password": PASSWORD,
                 "serial_number": "SN-1", "call_timeout_s": 5, "config": config},
        "tls": {"ca_file": str(csms.ca_file)},
        "ntp": {"servers": [ntp.address], "set_clock": False, "timeout_s": 1.0},
        "storage": {"state_dir": str(tmp_path / "state")},
        "control": {"socket": str(tmp_path / "control.sock")},
        "hal": {"backend": "sim"},
        "connector": [{"max_current_a": 32, "phases": 3}],
        "smart_charging": {"pilot_raise_min_interval_s": 0},
    }


@contextlib.asynccontextmanager
async def charger_env(tmp_path: Path, *, csms_kwargs: dict[str, Any] | None = None,
                      **ocpp_config: Any) -> AsyncIterator[ChargerEnv]:
    """A central system (passwords enforced) and an NTP responder, plus a config document
    (`env.doc`, editable before `env.app()` / `env.daemon()`)."""
    csms = CentralSystem(passwords={CP_ID: PASSWORD}, pki_dir=tmp_path / "pki", **(csms_kwargs or {}))
    await csms.start()
    ntp = NtpServer().start()
    try:
        yield ChargerEnv(tmp_path, csms, ntp, base_doc(tmp_path, csms, ntp, **ocpp_config))
    finally:
        ntp.close()
        await csms.stop()


async def eventually(predicate: Any, *, timeout_s: float = 10.0, interval_s: float = 0.05,
                     message: str = "condition not met") -> Any:
    """Poll until predicate() is truthy (a generous timeout, never a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {message}")
        await asyncio.sleep(interval_s)


# --------------------------------------------------------------------------- scenario helpers

WAIT_S = 15.0


@contextlib.asynccontextmanager
async def running(env: ChargerEnv, *, last_connector: int = 1) -> AsyncIterator[ChargePointApp]:
    """The charger, registered, with its connectors reported (errata 3.22)."""
    start = len(env.csms.received)
    async with env.app() as app:
        await env.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == last_connector,
                                after_index=start, timeout_s=20)
        yield app


def mark(env: ChargerEnv) -> int:
    """Index of the next CALL the central system will receive."""
    return len(env.csms.received)


def calls(env: ChargerEnv, action: str, after: int = 0) -> list[Any]:
    return [r for r in env.csms.received[after:] if r.action == action]


async def go_offline(env: ChargerEnv, app: ChargePointApp) -> None:
    await env.csms.stop()
    await eventually(lambda: not app.online, timeout_s=WAIT_S, message="charger offline")


async def come_back(env: ChargerEnv, app: ChargePointApp) -> int:
    """The central system back on the same port; the charger reconnects without waiting out its back-off."""
    index = len(env.csms.received)
    await env.csms.start()
    app.link.request_reconnect()
    return index


async def plug_and_charge(env: ChargerEnv, connector_id: int = 1) -> int:
    """Plug the simulated EV in (free vend starts a transaction); returns the transactionId."""
    await env.asim("sim.plug", connector=connector_id)
    start = await env.csms.wait_for("StartTransaction", timeout_s=WAIT_S)
    assert start.response is not None
    await env.csms.wait_for(
        "StatusNotification", lambda p: p["connectorId"] == connector_id and p["status"] == "Charging",
        timeout_s=WAIT_S)
    return int(start.response["transactionId"])


def split_log_lines(records: Iterable[logging.LogRecord]) -> list[str]:
    """The charger's log records that carry a line break (a peer-controlled CR/LF logged raw
    forges a log line; docs/ARCHITECTURE.md: one line per event). The bundled central system
    (chargepoint.csms) is test equipment and not checked."""
    return [f"{r.filename}:{r.lineno}: {r.getMessage()!r}"[:300] for r in records
            if r.name.startswith("chargepoint") and not r.name.startswith("chargepoint.csms")
            and any(c in r.getMessage() for c in "\r\n")]
