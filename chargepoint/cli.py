"""The `chargepoint` command line (interfaces.md §2)."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chargepoint.config import DEFAULT_CONFIG_PATH, DEFAULT_CONTROL_SOCKET, ConfigError, load_settings

if TYPE_CHECKING:
    import argparse

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _default_socket(config: str | None) -> Path:
    """The [control] socket of the given (or default) configuration, without validating the rest."""
    path = Path(config) if config else DEFAULT_CONFIG_PATH
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
        value = doc.get("control", {}).get("socket")
        if isinstance(value, str) and value:
            socket_path = Path(value)
            return socket_path if socket_path.is_absolute() else path.parent / socket_path
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        pass
    return DEFAULT_CONTROL_SOCKET


def _socket_of(args: argparse.Namespace) -> Path:
    return Path(args.socket) if args.socket else _default_socket(args.config)


def cmd_run(args: argparse.Namespace) -> int:
    return run(args.config)


def run(config: str) -> int:
    """`chargepoint run --config CONFIG`: validate the configuration, then run the daemon."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print(f"chargepoint: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from chargepoint.daemon import run_daemon

    return run_daemon(settings)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.file)
        from chargepoint.daemon import validate_runtime_settings

        validate_runtime_settings(settings)
    except ConfigError as exc:
        print(f"chargepoint: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.file}: OK (charge point {settings.ocpp.charge_point_id}, "
          f"{len(settings.connectors)} connector(s), hal {settings.hal.backend})")
    return EXIT_OK


def _call(args: argparse.Namespace, payload: dict[str, Any]) -> dict[str, Any] | None:
    from chargepoint.control import request

    path = _socket_of(args)
    try:
        return request(path, payload)
    except (OSError, ValueError) as exc:
        print(f"chargepoint: no daemon answers on {path}: {exc}", file=sys.stderr)
        return None


def cmd_status(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"cmd": "status"}
    if args.schedule:
        payload["schedule_hours"] = args.schedule
    response = _call(args, payload)
    if response is None:
        return EXIT_FAILURE
    if not response.get("ok"):
        print(f"chargepoint: {response.get('error', 'refused')}", file=sys.stderr)
        return EXIT_FAILURE
    result = response["result"]
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=False))
    else:
        print(render_status(result))
    return EXIT_OK


def cmd_sim(args: argparse.Namespace) -> int:
    request: dict[str, Any]
    if args.sim_cmd == "plug":
        request = {"cmd": "sim.plug", "connector": args.connector}
    elif args.sim_cmd == "unplug":
        request = {"cmd": "sim.unplug", "connector": args.connector}
    elif args.sim_cmd == "ev":
        request = {"cmd": "sim.ev", "connector": args.connector}
        if args.charge is not None:
            request["charge"] = args.charge
        if args.max_current is not None:
            request["max_current_a"] = args.max_current
        if args.phases is not None:
            request["phases"] = args.phases
    elif args.sim_cmd == "swipe":
        request = {"cmd": "sim.swipe", "id_tag": args.id_tag, "connector": args.connector}
    elif args.sim_cmd == "fault":
        request = {"cmd": "sim.fault", "connector": args.connector, "kind": args.kind}
    elif args.sim_cmd == "clear":
        request = {"cmd": "sim.clear", "connector": args.connector}
    elif args.sim_cmd == "link":
        request = {"cmd": "sim.link", "name": args.name, "up": args.state == "up"}
    else:  # pragma: no cover - argparse enforces the choices
        return EXIT_FAILURE
    response = _call(args, request)
    if response is None:
        return EXIT_FAILURE
    if not response.get("ok"):
        print(f"chargepoint: refused: {response.get('error', 'unknown reason')}", file=sys.stderr)
        return EXIT_FAILURE
    result = response.get("result")
    if result:
        print(json.dumps(result))
    return EXIT_OK


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def render_status(s: dict[str, Any]) -> str:
    """A field engineer's view on SSH: what the charger is doing and why."""
    lines = []
    clock = s.get("clock") or {}
    queue = s.get("queue") or {}
    lines.append(f"Charge point {s.get('charge_point_id')}  "
                 f"connection: {s.get('connection')}  registration: {s.get('registration') or '-'}  "
                 f"link: {s.get('link') or 'none'}")
    if s.get("last_error"):
        lines.append(f"  last connection error: {s['last_error']}")
    offset = clock.get("offset_s")
    lines.append(f"Clock: {'synchronised' if clock.get('synced') else 'NOT synchronised'}"
                 f"  offset {_fmt(offset, ' s', 3)}  last sync {clock.get('last_sync') or '-'}"
                 f"  source {clock.get('source') or '-'}")
    lines.append(f"Queue: {queue.get('pending', 0)} transaction message(s) awaiting the central system")
    for c in s.get("connectors", []):
        meter = c.get("meter") or {}
        tx = c.get("transaction_id")
        lines.append("")
        lines.append(f"Connector {c.get('id')}: {c.get('status')}"
                     + (f" ({c.get('error_code')})" if c.get("error_code") not in (None, "NoError") else ""))
        lines.append(f"  pilot state {c.get('cp_state')}  duty {_fmt(c.get('pilot_duty_percent'), ' %')}"
                     f"  offering {_fmt(c.get('offered_current_a'), ' A')}"
                     f"  relay {'closed' if c.get('relay_closed') else 'open'}")
        limit = c.get("limit") or {}
        if limit:
            lines.append(f"  limit {_fmt(limit.get('current_a'), ' A')} from {limit.get('source') or '-'}")
        lines.append(f"  transaction {tx if tx is not None else '-'}  id tag {c.get('id_tag') or '-'}")
        if meter:
            currents = ", ".join(_fmt(x, "") for x in meter.get("current_a") or [])
            volts = ", ".join(_fmt(x, "") for x in meter.get("voltage_v") or [])
            lines.append(f"  meter {_fmt(meter.get('energy_wh'), ' Wh')}  {_fmt(meter.get('power_w'), ' W')}"
                         f"  I [{currents}] A  U [{volts}] V")
        if c.get("meter_error"):
            lines.append(f"  meter error: {c['meter_error']}")
        schedule = c.get("schedule")
        if schedule:
            lines.append("  composite schedule:")
            unit = schedule.get("chargingRateUnit")
            for period in schedule.get("chargingSchedulePeriod", []):
                lines.append(f"    +{period['startPeriod']:>6d} s  {period['limit']} {unit}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(prog="chargepoint", description="OCPP 1.6J charge point daemon")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", default=str(DEFAULT_CONFIG_PATH))
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a configuration file without connecting")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    def add_socket(p: argparse.ArgumentParser, *, nested: bool = False) -> None:
        # Nested parsers must not reset a value given before the sub-command (argparse quirk).
        default = argparse.SUPPRESS if nested else None
        p.add_argument("--socket", default=default,
                       help="control socket (default: [control] socket of the configuration)")
        p.add_argument("--config", default=default,
                       help=f"configuration whose socket to use (default {DEFAULT_CONFIG_PATH})")

    status = sub.add_parser("status", help="show the running daemon's state")
    status.add_argument("--json", action="store_true")
    status.add_argument("--schedule", type=float, metavar="HOURS",
                        help="also show each connector's composite schedule for the next HOURS")
    add_socket(status)
    status.set_defaults(func=cmd_status)

    sim = sub.add_parser("sim", help="drive the simulated hardware")
    add_socket(sim)
    simsub = sim.add_subparsers(dest="sim_cmd", required=True)
    for name in ("plug", "unplug", "clear"):
        p = simsub.add_parser(name)
        p.add_argument("connector", type=int)
    ev = simsub.add_parser("ev")
    ev.add_argument("connector", type=int)
    ev.add_argument("--charge", dest="charge", action="store_true", default=None)
    ev.add_argument("--no-charge", dest="charge", action="store_false")
    ev.add_argument("--max-current", type=float)
    ev.add_argument("--phases", type=int, choices=(1, 2, 3))
    swipe = simsub.add_parser("swipe")
    swipe.add_argument("id_tag")
    swipe.add_argument("--connector", type=int, default=1)
    fault = simsub.add_parser("fault")
    fault.add_argument("connector", type=int)
    fault.add_argument("kind")
    link = simsub.add_parser("link")
    link.add_argument("name")
    link.add_argument("state", choices=("up", "down"))
    for p in list(simsub.choices.values()):
        add_socket(p, nested=True)
    sim.set_defaults(func=cmd_sim)
    return parser


def _run_config(argv: list[str]) -> str | None:
    """The configuration path of a plain `run [--config PATH]`, else None.

    The daemon lives for years: argparse (with gettext, locale and shutil) would hold
    about 0.6 MB of its resident memory for nothing once the two words are read (issue 2's
    RSS budget). Anything but these exact forms (help, an unknown option, a typo) goes
    to the full argparse parser, so its answers and exit codes stay the only ones."""
    if not argv or argv[0] != "run":
        return None
    rest = argv[1:]
    if not rest:
        return str(DEFAULT_CONFIG_PATH)
    if len(rest) == 2 and rest[0] == "--config" and not rest[1].startswith("-"):
        return rest[1]
    if len(rest) == 1 and rest[0].startswith("--config=") and len(rest[0]) > len("--config="):
        return rest[0][len("--config="):]
    return None


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    config = _run_config(args_list)
    if config is not None:
        return run(config)
    parser = build_parser()
    args = parser.parse_args(args_list)
    # Sub-parsers may redefine --socket/--config; argparse keeps the innermost value.
    for attr in ("socket", "config"):
        if not hasattr(args, attr):
            setattr(args, attr, None)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
