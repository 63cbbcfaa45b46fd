"""A standalone central system for field engineers and test rigs.

    python -m chargepoint.csms [--host H] [--port P] [--pki-dir DIR] [--password CP=PW ...]

Prints the endpoint URL and the CA file a charger needs, then logs every message
on one line (AuthorizationKey values redacted). Ctrl-C or SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from chargepoint.csms.server import DEFAULT_CERT_HOSTS, CentralSystem

DEFAULT_PKI_DIR = Path.home() / ".cache" / "chargepoint" / "csms-pki"


def _password(text: str) -> tuple[str, str]:
    cp_id, sep, password = text.partition("=")
    if not sep or not cp_id or not password:
        raise argparse.ArgumentTypeError(f"expected CP=PASSWORD, got {text!r}")
    return cp_id, password


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chargepoint.csms", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port (default 9000; 0 picks a free one)")
    parser.add_argument("--pki-dir", type=Path, default=DEFAULT_PKI_DIR,
                        help=f"CA and server certificate, created on first use (default {DEFAULT_PKI_DIR})")
    parser.add_argument("--cert-host", action="append", default=[], metavar="NAME",
                        help="extra DNS name or IP in the server certificate (only when it is first created)")
    parser.add_argument("--password", action="append", type=_password, default=[], metavar="CP=PW",
                        help="Basic auth password of a charge point (repeatable); none given: accept any")
    parser.add_argument("--boot-status", choices=("Accepted", "Pending", "Rejected"), default="Accepted")
    parser.add_argument("--heartbeat-interval", type=int, default=300, metavar="S")
    parser.add_argument("--no-validate", action="store_true", help="do not check payloads against the schemas")
    parser.add_argument("--verbose", action="store_true", help="also log websocket connection events")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    cs = CentralSystem(passwords=dict(args.password) or None, pki_dir=args.pki_dir,
                       cert_hosts=(*DEFAULT_CERT_HOSTS, *args.cert_host), boot_status=args.boot_status,
                       heartbeat_interval_s=args.heartbeat_interval, validate=not args.no_validate)
    cs.log_messages = True
    cs.record_messages = False   # runs for days: the log is the record
    await cs.start(args.host, args.port)
    print(f"OCPP 1.6J central system: {cs.url}  (a charge point appends /<id>)", flush=True)
    print(f"CA file: {cs.ca_file}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await cs.stop()
    if cs.violations:
        print(f"{len(cs.violations)} protocol violation(s) seen", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("chargepoint.csms.websockets").setLevel(logging.WARNING)
    try:
        return asyncio.run(run(args))
    except OSError as exc:   # e.g. the port is taken
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
