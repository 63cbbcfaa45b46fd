"""`chargepoint run`: the daemon's main loop, signals, systemd notify/watchdog, restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from chargepoint.config import ConfigError, Settings
from chargepoint.sdnotify import Notifier, watchdog_interval_s

log = logging.getLogger("chargepoint.daemon")


def setup_logging(level: str) -> None:
    """One line per event on stderr (journald adds the time); subsystem in the logger name."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries log frames and handshakes at DEBUG/INFO: keep them quiet unless debugging.
    for noisy in ("websockets", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "DEBUG" else logging.INFO)
    # pymodbus logs every failed poll at ERROR with frame dumps (~10 lines a poll): a silent
    # meter polled each second would flood the journal and wear the flash. Our meter service
    # reports the loss once (chargepoint.meter).
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL if level != "DEBUG" else logging.INFO)


def validate_runtime_settings(settings: Settings) -> None:
    """Checks that need the file system (also done by check-config)."""
    tls = settings.tls
    if tls.ca_file is not None and not tls.ca_file.is_file():
        raise ConfigError("tls.ca_file", f"{tls.ca_file} does not exist")
    for key, path in (("tls.client_cert_file", tls.client_cert_file), ("tls.client_key_file", tls.client_key_file)):
        if path is not None and not path.is_file():
            raise ConfigError(key, f"{path} does not exist")
    if tls.ca_file is not None:
        import ssl

        try:
            ssl.create_default_context(cafile=str(tls.ca_file))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError("tls.ca_file", f"not a usable PEM CA bundle: {exc}") from None


def release_startup_memory() -> None:
    """Give the heap that start-up (imports, schema compilation, TLS set-up) freed back to the
    OS: ~1.3 MB of RSS on a board with little of it. glibc only; harmless elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


async def _main(settings: Settings) -> tuple[int, bool]:
    from chargepoint.app import ChargePointApp

    notifier = Notifier()
    app = ChargePointApp(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.request_stop)
    await app.start()

    async def ready_when_connected_or_retrying() -> None:
        # READY once connected, or once the first attempt failed (the charger works offline).
        for _ in range(600):
            if app.link.state == "connected" or app.link.attempts >= 1:
                break
            await asyncio.sleep(0.1)
        notifier.ready(f"connection {app.link.state}")
        release_startup_memory()

    async def watchdog(interval_s: float) -> None:
        # Fed from the event loop itself: a hung loop stops feeding and systemd restarts us.
        while True:
            notifier.watchdog()
            await asyncio.sleep(interval_s)

    helpers = [loop.create_task(ready_when_connected_or_retrying())]
    interval_s = watchdog_interval_s()
    if interval_s is not None and notifier.enabled:
        helpers.append(loop.create_task(watchdog(interval_s)))
    log.info("charge point %s running (%d connector(s), hal %s)", settings.ocpp.charge_point_id,
             len(settings.connectors), settings.hal.backend)
    try:
        await app.wait_stopped()
    finally:
        notifier.stopping()
        for task in helpers:
            task.cancel()
        await app.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    log.info("stopped%s", " (restarting)" if app.restart_requested else "")
    return app.exit_code, app.restart_requested


def run_daemon(settings: Settings) -> int:
    setup_logging(settings.log_level)
    try:
        validate_runtime_settings(settings)
    except ConfigError as exc:
        print(f"chargepoint: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        code, restart = asyncio.run(_main(settings))
    except ConfigError as exc:  # e.g. an invalid [ocpp.config] value found at first start
        print(f"chargepoint: configuration error: {exc}", file=sys.stderr)
        return 2
    if restart:
        # Reset / firmware install: come back with the same configuration and state by
        # re-executing ourselves (same PID, so systemd and test rigs keep supervising).
        assert settings.source is not None
        argv = [sys.executable, "-m", "chargepoint", "run", "--config", str(Path(settings.source))]
        logging.shutdown()
        os.execv(sys.executable, argv)
    return code
