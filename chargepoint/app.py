"""The composition root: builds every part of the charger and wires them together.

Services follow one convention: `Service(app)` registers its OCPP handlers with
`app.on(...)` and its status fields with `app.add_status_contributor(...)`; an
optional `async run()` is started with the daemon and supervised (a crash is
logged and the service restarted, the charger keeps running).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

from chargepoint.clock import Clock
from chargepoint.config import Settings, check_state_dir
from chargepoint.control import ControlServer
from chargepoint.evse.controller import ConnectorController, ConnectorEvent
from chargepoint.ntp import keep_clock_synced
from chargepoint.ocppj.session import CallErrorReceived, CallTimeout, NoReply, NotConnected, Reply, Session
from chargepoint.services.configuration import ConfigurationStore, default_key_table
from chargepoint.services.registration import RegistrationService
from chargepoint.store.db import Store
from chargepoint.transport.link import Link
from chargepoint.transport.tls import build_client_ssl_context
from hal.interfaces import Board

log = logging.getLogger("chargepoint.app")

Payload = dict[str, Any]
InboundHandler = Callable[[Payload], Awaitable[Payload | Reply]]
StatusContributor = Callable[[dict[str, Any]], None]
ConnectorStatusContributor = Callable[[int, dict[str, Any]], None]
ControlHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]] | dict[str, Any]]

# Restart after this long when a service's run() crashed (never a busy loop).
SERVICE_RESTART_DELAY_S = 5.0
# How long a clean stop waits for services to finish (e.g. deliver a StopTransaction).
SHUTDOWN_GRACE_S = 5.0


class Service(Protocol):
    async def run(self) -> None: ...


class ChargePointApp:
    def __init__(self, settings: Settings, *, board: Board | None = None, clock: Clock | None = None,
                 validate_outbound: bool = False) -> None:
        self.settings = settings
        check_state_dir(settings.storage.state_dir)
        self.clock = clock or Clock()
        self.store = Store(settings.storage.state_dir, wall_s=self.clock.wall_s,
                           queue_cap=settings.storage.queue_cap)
        self.config = ConfigurationStore(
            self.store, default_key_table(number_of_connectors=len(settings.connectors)),
            initial=settings.ocpp.initial_config)
        self._adopt_configured_password()
        if settings.ocpp.security_profile > self.config.get_int("SecurityProfile"):
            # The file may raise the profile (never lower it: Security WP A05.FR.01).
            self.config.set_internal("SecurityProfile", settings.ocpp.security_profile)
        self.session = Session({}, call_timeout_s=settings.ocpp.call_timeout_s,
                               validate_outbound=validate_outbound)
        if board is None:
            from hal.factory import build_board

            board = build_board(settings)
        self.board = board
        self._connected = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self.exit_code = 0
        self.restart_requested = False
        self._power_cut = False
        self._tasks: list[asyncio.Task[None]] = []
        self._services: list[object] = []
        self._status_contributors: list[StatusContributor] = []
        self._connector_status_contributors: list[ConnectorStatusContributor] = []
        self._control_handlers: dict[str, ControlHandler] = {}
        self._connector_listeners: list[Callable[[ConnectorEvent], None]] = []
        self._link_listeners: list[Callable[[str], None]] = []
        self._fire_and_forget: set[asyncio.Task[Any]] = set()
        self._schedule_provider: Callable[[int, int], dict[str, Any] | None] | None = None

        # The simulator reports every change of its inputs (sim.* commands -> _on_sim_change):
        # no idle polling of the connectors or of the network link.
        hw_reports_changes = board.extra.get("sim") is not None
        self.controllers: dict[int, ConnectorController] = {}
        for connector in settings.connectors:
            hw = board.connector(connector.connector_id)
            self.controllers[connector.connector_id] = ConnectorController(
                hw,
                max_current_a=connector.max_current_a,
                monotonic=self.clock.monotonic_s,
                pilot_raise_min_interval_s=settings.smart_charging.pilot_raise_min_interval_s,
                on_change=self._on_connector_event,
                min_status_duration_s=lambda: float(self.config.get_int("MinimumStatusDuration")),
                idle_step_interval_s=None if hw_reports_changes else 1.0,
            )

        self.registration = RegistrationService(self)
        self.link = Link(
            settings=settings,
            clock=self.clock,
            session=self.session,
            password_provider=self.basic_auth_password,
            ssl_context_factory=self.ssl_context,
            ping_interval_s=lambda: float(self.config.get_int("WebSocketPingInterval")),
            active_link=board.network.active_link,
            on_state_change=self._on_link_state,
            on_security_event=self._on_link_security_event,
            link_poll_s=None if hw_reports_changes else 1.0,
        )
        self.config.add_listener(
            lambda key, _value: self.link.ping_interval_changed() if key == "WebSocketPingInterval" else None)
        self.control = ControlServer(settings.control.socket, self._handle_control)
        self.add_control_handler("status", self._control_status)
        sim: Any = board.extra.get("sim")
        if sim is not None:
            # A plug event reaches the controller at once, not at its next poll.
            sim.add_listener(self._on_sim_change)
            handle = sim.handle_command
            for cmd in ("sim.plug", "sim.unplug", "sim.ev", "sim.swipe", "sim.fault", "sim.clear", "sim.link",
                        "sim.state"):
                self.add_control_handler(cmd, handle)
        self.security_events: Callable[[str, str], None] | None = None
        # Feature services set by chargepoint.services.build_services (typed as Any to keep
        # the composition root free of import cycles).
        self.meters: Any = None
        self.transactions: Any = None
        self.metering: Any = None
        self.auth: Any = None
        self.smart_charging: Any = None
        self.trigger: Any = None
        self.availability: Any = None
        self.reservations: Any = None
        self.local_list: Any = None
        self.data_transfer: Any = None
        self.firmware: Any = None
        self.security: Any = None
        self.tx_sender: Any = None
        self._build_services()

    # ------------------------------------------------------------------ services

    def _build_services(self) -> None:
        """Instantiate the feature services. Order matters only for who registers first."""
        from chargepoint.services import build_services

        self._services.extend(build_services(self))

    def service(self, kind: type[Any]) -> Any:
        for svc in self._services:
            if isinstance(svc, kind):
                return svc
        raise LookupError(kind.__name__)

    # ------------------------------------------------------------------ secrets

    def _adopt_configured_password(self) -> None:
        """The TOML password seeds AuthorizationKey; a ChangeConfiguration later wins, until an
        engineer changes the TOML password again (then the file wins: it is the newer intent)."""
        password = self.settings.ocpp.password
        if password is None:
            return
        digest = hashlib.sha256(password.encode()).hexdigest()
        if self.store.kv_get("secrets", "configured_password_sha256") != digest:
            self.config.set_internal("AuthorizationKey", password)
            self.store.kv_put("secrets", "configured_password_sha256", digest)

    def password(self) -> str | None:
        value = self.config.raw("AuthorizationKey")
        return value or None

    def security_profile(self) -> int:
        return self.config.get_int("SecurityProfile")

    def basic_auth_password(self) -> str | None:
        """Profile 2: Basic auth on every handshake. Profile 3: the client certificate is the
        credential (Security WP §2.5), no password is sent."""
        return None if self.security_profile() >= 3 else self.password()

    def client_certificate(self) -> tuple[Path, Path] | None:
        """The certificate a central system signed (CertificateSigned), else the configured one."""
        stored = self.security.client_certificate() if self.security is not None else None
        if stored is not None:
            return (Path(stored[0]), Path(stored[1]))
        tls = self.settings.tls
        if tls.client_cert_file is not None and tls.client_key_file is not None:
            return (tls.client_cert_file, tls.client_key_file)
        return None

    def ssl_context(self) -> ssl.SSLContext:
        """Built for every handshake, so an installed root or a newly signed certificate is
        used on the next connection. Trust: [tls] ca_file plus the CentralSystemRootCertificates
        installed with InstallCertificate (Security WP M05)."""
        client = self.client_certificate() if self.security_profile() >= 3 else None
        ctx = build_client_ssl_context(self.settings.tls, cert_file=client[0] if client else None,
                                       key_file=client[1] if client else None)
        bundle = self.security.central_system_ca_bundle() if self.security is not None else None
        if bundle is not None:
            try:
                ctx.load_verify_locations(cafile=str(bundle))
            except (ssl.SSLError, OSError) as exc:
                log.error("installed central-system roots unusable: %s", exc)
        return ctx

    # ------------------------------------------------------------------ identity

    def firmware_version(self) -> str:
        installed = self.store.kv_get("firmware", "installed_version")
        return str(installed) if installed else self.settings.ocpp.firmware_version

    def meter_type(self) -> str | None:
        meter = self.settings.connectors[0].meter
        return meter.driver.upper() if meter is not None else ("SIM" if self.settings.hal.backend == "sim" else None)

    def persist_registration(self) -> None:
        self.store.kv_put("registration", "ever_accepted", True)

    # ------------------------------------------------------------------ OCPP plumbing

    def on(self, action: str, handler: InboundHandler) -> None:
        """Register an inbound CALL handler behind the registration gate (OCPP 1.6 §4.2)."""

        async def gated(payload: Payload) -> Payload | Reply:
            verdict = self.registration.may_answer(action)
            if verdict is False:
                # While Rejected the charger SHALL NOT respond (§4.2); the central system's
                # call times out on its side. We answer nothing, but must not leak the task.
                raise _Silent()
            if verdict == "Rejected":
                return {"status": "Rejected"}
            return await handler(payload)

        self.session.set_handler(action, gated)

    async def call(self, action: str, payload: Payload, *, allow_unregistered: bool = False) -> Payload:
        """Send a request now (not queued). Raises NotConnected when offline or not accepted."""
        if not allow_unregistered and not self.registration.online:
            raise NotConnected(f"{action}: not registered/connected")
        response = await self.session.call(action, payload)
        self.registration.note_outbound()
        return response

    async def try_call(self, action: str, payload: Payload, **kwargs: Any) -> Payload | None:
        """call(), with a failure logged and answered None (for best-effort notifications)."""
        try:
            return await self.call(action, payload, **kwargs)
        except (CallErrorReceived, CallTimeout, NotConnected) as exc:
            code = getattr(exc, "error_code", None)   # a CALLERROR's code is the central system's text
            log.info("%s not delivered: %s%s", action, type(exc).__name__, "" if code is None else f" {code!r}")
            return None

    @property
    def online(self) -> bool:
        return self.registration.online

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def _on_link_state(self, state: str) -> None:
        if state == "connected":
            self._connected.set()
        else:
            self._connected.clear()
        for callback in list(self._link_listeners):
            callback(state)

    def add_link_listener(self, callback: Callable[[str], None]) -> None:
        self._link_listeners.append(callback)

    def _on_link_security_event(self, kind: str, tech_info: str) -> None:
        if self.security_events is not None:
            self.security_events(kind, tech_info)

    # ------------------------------------------------------------------ connector events

    def _on_sim_change(self, change: Any) -> None:
        if getattr(change, "kind", None) == "link":
            self.link.link_changed()
        connector_id = getattr(change, "connector_id", None)
        for cid, controller in self.controllers.items():
            if connector_id is None or connector_id == cid:
                controller.poke()

    def add_connector_listener(self, listener: Callable[[ConnectorEvent], None]) -> None:
        self._connector_listeners.append(listener)

    def _on_connector_event(self, event: ConnectorEvent) -> None:
        for listener in list(self._connector_listeners):
            try:
                listener(event)
            except Exception:
                log.exception("connector listener failed for %s", type(event).__name__)

    # ------------------------------------------------------------------ tasks

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A fire-and-forget task whose failure is logged, never lost."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._fire_and_forget.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._fire_and_forget.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed: %r", task.get_name(), task.exception())

    async def _supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        while not self._stop_requested.is_set():
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s crashed; restarting in %.0f s", name, SERVICE_RESTART_DELAY_S)
                await asyncio.sleep(SERVICE_RESTART_DELAY_S)

    # ------------------------------------------------------------------ lifecycle

    def request_stop(self, *, restart: bool = False, exit_code: int = 0) -> None:
        self.restart_requested = self.restart_requested or restart
        self.exit_code = exit_code
        self._stop_requested.set()

    async def start(self) -> None:
        """Start everything; returns once running (tests use this, the daemon uses run())."""
        await self.control.start()
        starters: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        for cid, controller in self.controllers.items():
            starters.append((f"connector-{cid}", controller.run))
        for svc in self._services:
            run = getattr(svc, "run", None)
            if run is not None:
                starters.append((type(svc).__name__, run))
        starters.append(("registration", self.registration.run))
        starters.append(("ntp-resync", lambda: keep_clock_synced(self.clock, self.settings.ntp)))
        starters.append(("link", self.link.run))
        for name, factory in starters:
            self._tasks.append(asyncio.get_running_loop().create_task(self._supervise(name, factory), name=name))

    async def wait_stopped(self) -> None:
        await self._stop_requested.wait()

    def simulate_power_cut(self) -> None:
        """Tests: make the next stop() skip the services' shutdown, as a power cut would
        (the store is still closed cleanly; SQLite's durability is tested with real kills)."""
        self._power_cut = True

    async def stop(self) -> None:
        """Stop cleanly: services end their work (transactions are stopped, their messages
        queued durably and given a moment to reach the central system), the relay opens,
        nothing half-written, the socket removed."""
        for svc in [] if self._power_cut else self._services:
            shutdown = getattr(svc, "shutdown", None)
            if shutdown is None:
                continue
            try:
                await asyncio.wait_for(shutdown(), timeout=SHUTDOWN_GRACE_S)
            except Exception:
                log.exception("%s: shutdown failed", type(svc).__name__)
        for controller in self.controllers.values():
            with contextlib.suppress(Exception):
                controller.safe_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.link.stop(), timeout=5.0)
        for task in self._tasks:
            task.cancel()
        for task in list(self._fire_and_forget):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._fire_and_forget, return_exceptions=True)
        self._tasks.clear()
        await self.control.stop()
        with contextlib.suppress(Exception):
            await self.session.aclose()
        with contextlib.suppress(Exception):
            await self.board.close()
        self.store.close()

    # ------------------------------------------------------------------ status & control

    def add_status_contributor(self, contributor: StatusContributor) -> None:
        self._status_contributors.append(contributor)

    def add_connector_status_contributor(self, contributor: ConnectorStatusContributor) -> None:
        self._connector_status_contributors.append(contributor)

    def add_control_handler(self, cmd: str, handler: ControlHandler) -> None:
        self._control_handlers[cmd] = handler

    def status(self) -> dict[str, Any]:
        """interfaces.md §5 `status` result."""
        link_stats = self.link.stats()
        result: dict[str, Any] = {
            "charge_point_id": self.settings.ocpp.charge_point_id,
            "connection": self.link.state,
            "registration": self.registration.status,
            "link": self.board.network.active_link(),
            "clock": self.clock.to_json(),
            "queue": {"pending": self.store.queue.pending_count()},
            "connectors": [],
            "last_error": link_stats.get("last_error"),
            "firmware_version": self.firmware_version(),
            "uptime_s": round(time.monotonic() - _PROCESS_START_S, 1),
        }
        for cid, controller in self.controllers.items():
            entry = controller.snapshot()
            entry.setdefault("transaction_id", None)
            entry.setdefault("id_tag", None)
            entry.setdefault("meter", None)
            for contributor in self._connector_status_contributors:
                contributor(cid, entry)
            result["connectors"].append(entry)
        for station_contributor in self._status_contributors:
            station_contributor(result)
        return result

    async def _control_status(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "result": self.status_with_request(request)}

    def status_with_request(self, request: dict[str, Any]) -> dict[str, Any]:
        result = self.status()
        hours = request.get("schedule_hours")
        if isinstance(hours, (int, float)) and hours > 0 and self._schedule_provider is not None:
            for entry in result["connectors"]:
                entry["schedule"] = self._schedule_provider(entry["id"], int(hours * 3600))
        return result

    def set_schedule_provider(self, provider: Callable[[int, int], dict[str, Any] | None]) -> None:
        self._schedule_provider = provider

    async def _handle_control(self, request: dict[str, Any]) -> dict[str, Any]:
        handler = self._control_handlers.get(request["cmd"])
        if handler is None:
            if request["cmd"].startswith("sim.") and self.board.extra.get("sim") is None:
                return {"ok": False, "error": "no simulated hardware: [hal] backend is not \"sim\""}
            return {"ok": False, "error": f"unknown command {request['cmd']!r}"}
        result = handler(request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, dict)
        return result


class _Silent(NoReply):
    """Raised by a gated handler to send nothing at all (registration Rejected)."""


_PROCESS_START_S = time.monotonic()
