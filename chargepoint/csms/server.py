"""The bundled OCPP 1.6J central system: the demo's peer and the referee of the end-to-end tests.

Why raw frames and not `ocpp.v16.ChargePoint`: the central system must catch the
charger's mistakes, not paper over them, and must misbehave on request. Owning the
frames lets it
- record every frame and every violation instead of raising inside a library loop,
- answer each malformed or invalid CALL with the OCPP-J 4.2.3 CALLERROR we choose
  (the library answers 1.6 schema errors with the 2.0 code "FormatViolation"),
- send raw and malformed frames, answer late, fail on purpose, stop reading (half-open),
- process a CALL while one of its own CALLs is outstanding (no handler deadlock,
  no module-global route table, monotonic timeouts),
- validate each message once with reused Draft 4 validators, on the event loop,
  instead of four times per round trip on worker threads (field notes 2).
The checks themselves (frames, schemas, timestamps) are pure and live in
`chargepoint.csms.checks`; this module is the asyncio/websockets side.

Strictness (each finding is appended to `violations`; tests assert it stays empty):
schema of every CALL and CALLRESULT from the charger, frame structure (OCPP-J 4),
timestamps not before `not_before`, one CALL in flight from the charger (OCPP-J
4.1.1), message ids unique per charge point across reconnects (OCPP-J errata 3.7;
an identical resend is a permitted retry, errata 3.1), CALLs before the
BootNotification is Accepted (OCPP 1.6 4.2, OCPP-J errata 3.10), a BootNotification
before the Pending/Rejected interval elapsed, and transaction bookkeeping (unknown or
double StopTransaction, MeterValues for an unknown or stopped transaction, a second
open transaction on one connector, meterStop below meterStart).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import hmac
import itertools
import json
import logging
import shutil
import ssl
import tempfile
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from chargepoint.csms import checks
from chargepoint.devtools.pki import Pki, ensure_pki

log = logging.getLogger("chargepoint.csms")

SUBPROTOCOL = "ocpp1.6"
ENDPOINT_PATH = "/ocpp"
DEFAULT_CERT_HOSTS = ("localhost", "127.0.0.1", "::1")

Payload = dict[str, Any]
Responder = Callable[[str, Payload], Payload | Awaitable[Payload]]
_T = TypeVar("_T")

# TriggerMessage / ExtendedTriggerMessage requestedMessage -> the CALL it allows
# while Pending (OCPP 1.6 4.2: only on a TriggerMessage; security WP for the extended one).
_TRIGGERED_ACTION = {
    "BootNotification": "BootNotification", "DiagnosticsStatusNotification": "DiagnosticsStatusNotification",
    "FirmwareStatusNotification": "FirmwareStatusNotification", "Heartbeat": "Heartbeat",
    "MeterValues": "MeterValues", "StatusNotification": "StatusNotification",
    "LogStatusNotification": "LogStatusNotification", "SignChargePointCertificate": "SignCertificate",
}


class CallErrorResponse(Exception):
    """A CALLERROR (OCPP-J 4.2.3): raised by `call()` when the charger answers one, and
    raised by a responder to make the central system answer one."""

    def __init__(self, code: str, description: str = "", details: Payload | None = None) -> None:
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description
        self.details = details or {}


@dataclass
class Received:
    """One CALL from a charge point, in arrival order."""

    cp_id: str
    action: str
    payload: Payload
    message_id: str
    time_monotonic: float
    index: int = 0                      # position in CentralSystem.received
    connection_id: int = 0
    response: Payload | None = None     # the CALLRESULT payload we answered
    error_code: str | None = None       # or the CALLERROR code we answered
    error_description: str | None = None
    retry: bool = False                 # same id and content as an earlier CALL (errata 3.1)


@dataclass(frozen=True)
class Violation:
    cp_id: str | None
    kind: str          # short slug: "schema", "timestamp", "concurrent-call", "double-stop", ...
    detail: str
    action: str | None = None
    message_id: str | None = None
    time_monotonic: float = 0.0

    def __str__(self) -> str:
        return f"[{self.kind}] {self.cp_id} {self.action or ''} {self.message_id or ''}: {self.detail}"


@dataclass(frozen=True)
class FrameRecord:
    """A raw websocket text frame, direction "in" (from the charger) or "out"."""

    cp_id: str
    direction: str
    text: str
    time_monotonic: float
    connection_id: int

    @property
    def parsed(self) -> Any:
        """The frame's JSON, or None when it is not JSON."""
        try:
            return json.loads(self.text)
        except ValueError:
            return None


@dataclass
class ConnectionInfo:
    """One opening handshake (accepted or not) and what became of it."""

    connection_id: int
    path: str
    headers: list[tuple[str, str]]
    authorization: str | None          # the raw Authorization header (tests check it exactly)
    offered_subprotocols: list[str]
    remote_address: Any
    opened_monotonic: float
    cp_id: str | None = None
    username: str | None = None        # from Basic auth
    tls_version: str | None = None
    cipher: str | None = None
    peer_cert: Any = None              # client certificate (security profile 3), when verified
    http_status: int | None = None     # 101 when the websocket opened
    reject_reason: str | None = None
    subprotocol: str | None = None
    extensions: list[str] = field(default_factory=list)
    accepted: bool = False
    closed_monotonic: float | None = None
    close_code: int | None = None      # the close code the charger sent (None: no close frame)
    close_reason: str | None = None
    closed_by: str | None = None       # "peer", "server", "drop", "replaced", "stop"


@dataclass
class TransactionRecord:
    transaction_id: int
    cp_id: str
    connector_id: Any
    id_tag: Any
    start: Payload
    stop: Payload | None = None
    meter_values: list[Payload] = field(default_factory=list)
    start_message_id: str | None = None
    stop_message_id: str | None = None


class _Live:
    """An open websocket of one charge point."""

    def __init__(self, ws: ServerConnection, info: ConnectionInfo, cp_id: str) -> None:
        self.ws = ws
        self.info = info
        self.cp_id = cp_id
        self.blackholed = False
        self.unblocked = asyncio.Event()
        self.unblocked.set()
        self.inflight: dict[str, float] = {}   # charger CALLs not answered yet: id -> arrival
        self.tasks: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()
        self.closed = False


@dataclass
class _Outgoing:
    cp_id: str
    action: str
    payload: Payload
    future: asyncio.Future[Payload]
    live: _Live


@dataclass
class _Seen:
    fingerprint: bytes                # hash of action and payload
    response: Payload | None = None   # what we answered, for idempotent retries


def make_server_ssl_context(pki: Pki, *, minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
                            maximum_version: ssl.TLSVersion | None = None, ciphers: str | None = None,
                            client_ca: Path | None = None) -> ssl.SSLContext:
    """A server TLS context for `pki`; tests restrict versions/ciphers or require a client
    certificate (security profile 3) with it. `ciphers` governs TLS <= 1.2 only (field notes 3)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = minimum_version
    if maximum_version is not None:
        ctx.maximum_version = maximum_version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(client_ca))
    return ctx


def _redact(action: str, payload: Payload) -> Payload:
    """Never log the AuthorizationKey (architecture: logging rules)."""
    if action == "ChangeConfiguration" and payload.get("key") == "AuthorizationKey":
        return {**payload, "value": "***"}
    return payload


class CentralSystem:
    """A strict OCPP 1.6J central system over wss with HTTP Basic auth, for demos and tests.

    Everything is in memory and survives `stop()`/`start()`: received CALLs, frames,
    violations, registrations, transactions and the next transaction id.
    """

    def __init__(self, *, passwords: dict[str, str] | None = None, ssl_context: ssl.SSLContext | None = None,
                 pki_dir: Path | None = None, boot_status: str = "Accepted", heartbeat_interval_s: int = 300,
                 validate: bool = True, cert_hosts: tuple[str, ...] = DEFAULT_CERT_HOSTS,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall_time: Callable[[], float] = time.time) -> None:
        # None: accept any charge point, with or without credentials. Mutable at runtime.
        self.passwords = passwords
        self.boot_status = boot_status
        self.heartbeat_interval_s = heartbeat_interval_s      # interval of an Accepted BootNotification.conf
        self.boot_retry_interval_s = 10                       # interval of a Pending/Rejected one
        self.validate = validate
        self.require_boot = True          # CALLs before an Accepted BootNotification are violations
        self.not_before = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)   # timestamp plausibility floor
        self.charger_call_timeout_s: float | None = None  # a CALL after this long unanswered may be followed
        self.time_offset_s = 0.0          # skews currentTime in Heartbeat/BootNotification answers
        self.log_messages = False         # one INFO line per message (the standalone tool)
        self.record_messages = True       # keep `received` and `frames` (off for long-running rigs)
        self.answer_without_subprotocol = False  # fault injection: 101 without ocpp1.6, then close
        self.close_timeout_s = 5.0
        # Answers
        self.authorize: dict[str, str | Payload] = {}       # idTag -> status or full idTagInfo
        self.start_status: dict[str, str | Payload] = {}    # idTag -> StartTransaction idTagInfo
        self.default_id_tag_status = "Accepted"
        self.data_transfer_status = "UnknownVendorId"
        self.responders: dict[str, Responder] = {}
        self.next_transaction_id = 1
        # Records
        self.received: list[Received] = []
        self.frames: list[FrameRecord] = []
        self.connections: list[ConnectionInfo] = []
        self.violations: list[Violation] = []
        self.registration: dict[str, str] = {}               # cp_id -> last BootNotification status
        self.transactions: dict[int, TransactionRecord] = {}
        self.statuses: dict[str, dict[int, Payload]] = {}    # cp_id -> connectorId -> StatusNotification

        self._monotonic = monotonic
        self._wall_time = wall_time
        self._ssl_context = ssl_context
        self._pki: Pki | None = None
        if ssl_context is None or pki_dir is not None:
            if pki_dir is None:
                pki_dir = Path(tempfile.mkdtemp(prefix="csms-pki-"))
                weakref.finalize(self, shutil.rmtree, pki_dir, ignore_errors=True)
            self._pki = ensure_pki(pki_dir, hosts=cert_hosts)
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._server: Server | None = None
        self._ids = itertools.count(1)
        self._infos: dict[ServerConnection, ConnectionInfo] = {}
        self._active: dict[str, _Live] = {}
        self._outgoing: dict[str, _Outgoing] = {}
        self._timed_out: set[str] = set()
        self._raw_ids: dict[str, dict[str, str | None]] = {}
        self._raw_unmatched: dict[str, int] = {}
        self._raw_cursor: dict[str, int] = {}
        self._call_locks: dict[str, asyncio.Lock] = {}
        self._seen: dict[str, dict[str, _Seen]] = {}
        self._failures: dict[str, list[Any]] = {}
        self._delays: dict[str, float] = {}
        self._triggered: dict[str, set[str]] = {}
        self._not_before_boot: dict[str, float] = {}        # cp_id -> monotonic time a re-boot may come
        self._waiters: set[asyncio.Future[None]] = set()

    # --- lifecycle ------------------------------------------------------------

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            assert self._pki is not None
            self._ssl_context = make_server_ssl_context(self._pki)
        return self._ssl_context

    @property
    def pki(self) -> Pki:
        if self._pki is None:
            raise RuntimeError("own ssl_context given without pki_dir: the CA is the caller's")
        return self._pki

    @property
    def ca_file(self) -> Path:
        """The CA certificate a charger needs as its [tls] ca_file."""
        return self.pki.ca_cert

    @property
    def url(self) -> str:
        """The OCPP-J endpoint URL; a charger appends "/<charge point id>" (OCPP-J 3.1.1)."""
        if self.port is None:
            raise RuntimeError("not started")
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else "[::1]" if self.host == "::" else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"wss://{host}:{self.port}{ENDPOINT_PATH}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        """Listen. `port` None: the port of the previous start (restart), else a free one."""
        if self._server is not None:
            raise RuntimeError("already started")
        if port is None:
            port = self.port or 0
        self._server = await serve(
            self._handler, host, port, ssl=self.ssl_context,
            subprotocols=[Subprotocol(SUBPROTOCOL)], select_subprotocol=self._select_subprotocol,
            process_request=self._process_request, process_response=self._process_response,
            # The charger drives liveness (WebSocketPingInterval); a server keepalive
            # would hide a charger that never pings, and would answer for a blackholed one.
            ping_interval=None, close_timeout=self.close_timeout_s, server_header=None,
            logger=logging.getLogger("chargepoint.csms.websockets"))
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("central system listening on %s", self.url)

    async def stop(self, *, abort: bool = False) -> None:
        """Stop listening and close every connection (1001 going away; `abort`: no close
        frame, as a crash). Restart with `start()` on the same port."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close(close_connections=False)
        closing = []
        for live in list(self._active.values()):
            if live.ws.protocol.state is State.OPEN:
                live.info.closed_by = "stop"
            if abort or live.blackholed:
                live.ws.transport.abort()
            else:
                closing.append(asyncio.ensure_future(live.ws.close(1001, "central system stopping")))
        if closing:
            await asyncio.wait(closing, timeout=self.close_timeout_s + 1)
        for live in list(self._active.values()):
            live.ws.transport.abort()   # whoever did not finish the closing handshake
        await server.wait_closed()
        log.info("central system stopped")

    async def __aenter__(self) -> CentralSystem:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- fault injection and answers -------------------------------------------

    def fail_next(self, action: str, n: int = 1, error_code: str = "InternalError",
                  description: str = "injected failure") -> None:
        """Answer the next `n` CALLs of `action` with a CALLERROR (for retry tests)."""
        self._failures[action] = [n, error_code, description]

    def delay(self, action: str, seconds: float) -> None:
        """Answer every `action` CALL `seconds` late (0 restores prompt answers)."""
        if seconds > 0:
            self._delays[action] = seconds
        else:
            self._delays.pop(action, None)

    def set_password(self, cp_id: str, password: str) -> None:
        if self.passwords is None:
            self.passwords = {}
        self.passwords[cp_id] = password

    def blackhole(self, cp_id: str, enabled: bool = True) -> None:
        """Stop (or resume) reading the charger's connection: no answers, no pongs,
        bytes pile up in the kernel, as on a half-open link."""
        live = self._live(cp_id)
        if enabled == live.blackholed:
            return
        live.blackholed = enabled
        if enabled:
            live.unblocked.clear()
            live.ws.transport.pause_reading()
        else:
            live.ws.transport.resume_reading()
            live.unblocked.set()
        log.info("%s: blackhole %s", cp_id, "on" if enabled else "off")

    async def drop(self, cp_id: str) -> None:
        """Close the TCP connection abruptly (no close frame)."""
        live = self._live(cp_id)
        live.info.closed_by = "drop"
        live.ws.transport.abort()
        await asyncio.wait_for(live.done.wait(), 5.0)

    async def disconnect(self, cp_id: str, code: int = 1000, reason: str = "") -> None:
        """Close the connection with a closing handshake."""
        live = self._live(cp_id)
        live.info.closed_by = "server"
        await live.ws.close(code, reason)
        await asyncio.wait_for(live.done.wait(), self.close_timeout_s + 1)

    # --- queries ----------------------------------------------------------------

    def is_connected(self, cp_id: str) -> bool:
        live = self._active.get(cp_id)
        return live is not None and not live.closed

    async def wait_connected(self, cp_id: str, timeout_s: float = 10.0, *, after_index: int = 0) -> ConnectionInfo:
        """An open connection of `cp_id` at `connections[after_index:]` (pass
        len(connections) to wait for a reconnect)."""
        def check() -> ConnectionInfo | None:
            live = self._active.get(cp_id)
            if live is not None and not live.closed and any(c is live.info for c in self.connections[after_index:]):
                return live.info
            return None
        return await self._wait(check, timeout_s, f"{cp_id} connected")

    async def wait_disconnected(self, cp_id: str, timeout_s: float = 10.0) -> None:
        await self._wait(lambda: True if not self.is_connected(cp_id) else None, timeout_s,
                         f"{cp_id} disconnected")

    async def wait_for(self, action: str, predicate: Callable[[Payload], bool] | None = None, *,
                       cp_id: str | None = None, timeout_s: float = 10.0, after_index: int = 0) -> Received:
        """The first CALL of `action` at `received[after_index:]` matching `predicate`."""
        scanned = after_index

        def check() -> Received | None:
            nonlocal scanned
            while scanned < len(self.received):
                rec = self.received[scanned]
                scanned += 1
                if rec.action == action and (cp_id is None or rec.cp_id == cp_id) and (
                        predicate is None or predicate(rec.payload)):
                    return rec
            return None
        return await self._wait(check, timeout_s, f"{action} from {cp_id or 'any charge point'}")

    def received_of(self, action: str, cp_id: str | None = None) -> list[Received]:
        return [r for r in self.received if r.action == action and (cp_id is None or r.cp_id == cp_id)]

    def connector_status(self, cp_id: str, connector_id: int) -> str | None:
        """The status of the last StatusNotification for the connector."""
        payload = self.statuses.get(cp_id, {}).get(connector_id)
        return None if payload is None else payload.get("status")

    def assert_no_violations(self) -> None:
        if self.violations:
            raise AssertionError("central system saw violations:\n" + "\n".join(map(str, self.violations)))

    # --- calls to the charger -----------------------------------------------------

    async def call(self, cp_id: str, action: str, payload: Payload, *, timeout_s: float = 10.0) -> Payload:
        """Send a CALL and return the CALLRESULT payload; raise CallErrorResponse on a
        CALLERROR, TimeoutError, or ConnectionError when not connected / the link drops."""
        lock = self._call_locks.setdefault(cp_id, asyncio.Lock())
        async with lock:  # OCPP-J 4.1.1: one CALL of ours in flight per charge point
            live = self._live(cp_id)
            mid = str(uuid.uuid4())
            future: asyncio.Future[Payload] = asyncio.get_running_loop().create_future()
            self._outgoing[mid] = _Outgoing(cp_id, action, payload, future, live)
            try:
                self._log_message(cp_id, "->", action, payload)
                await self._send(live, json.dumps([checks.CALL, mid, action, payload]), answer=False)
                return await asyncio.wait_for(future, timeout_s)
            except TimeoutError:
                self._timed_out.add(mid)
                raise TimeoutError(f"{cp_id} did not answer {action} within {timeout_s} s") from None
            finally:
                self._outgoing.pop(mid, None)

    async def send_raw(self, cp_id: str, text: str) -> None:
        """Send `text` as one frame, as is. The charger's next frames are read with
        recv_next_frame(); its answer is not counted as an unexpected result."""
        live = self._live(cp_id)
        try:
            msg = json.loads(text)
        except ValueError:
            msg = None
        if isinstance(msg, list) and len(msg) >= 2 and msg[0] == checks.CALL and isinstance(msg[1], str):
            action = msg[2] if len(msg) > 2 and isinstance(msg[2], str) else None
            self._raw_ids.setdefault(cp_id, {})[msg[1]] = action
        else:
            self._raw_unmatched[cp_id] = self._raw_unmatched.get(cp_id, 0) + 1
        self._raw_cursor[cp_id] = len(self.frames)
        await self._send(live, text, answer=False)

    async def recv_next_frame(self, cp_id: str, *, timeout_s: float = 10.0,
                              message_id: str | None = None) -> FrameRecord:
        """The next frame from `cp_id` after the last send_raw() (or the last frame this
        returned); with `message_id`, the next one carrying that UniqueId."""
        start = self._raw_cursor.get(cp_id, len(self.frames))

        def check() -> FrameRecord | None:
            for i in range(start, len(self.frames)):
                fr = self.frames[i]
                if fr.cp_id != cp_id or fr.direction != "in":
                    continue
                parsed = fr.parsed if message_id is not None else None
                if message_id is None or (isinstance(parsed, list) and len(parsed) > 1 and parsed[1] == message_id):
                    self._raw_cursor[cp_id] = i + 1
                    return fr
            return None
        return await self._wait(check, timeout_s, f"a frame from {cp_id}")

    # --- handshake ------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        headers = request.headers
        offered = [p.strip() for value in headers.get_all("Sec-WebSocket-Protocol") for p in value.split(",")]
        info = ConnectionInfo(
            connection_id=next(self._ids), path=request.path, headers=list(headers.raw_items()),
            authorization=headers.get("Authorization"), offered_subprotocols=[p for p in offered if p],
            remote_address=connection.remote_address, opened_monotonic=self._monotonic())
        ssl_object = connection.transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            info.tls_version = ssl_object.version()
            cipher = ssl_object.cipher()
            info.cipher = cipher[0] if cipher else None
            info.peer_cert = ssl_object.getpeercert() or None
        self.connections.append(info)
        self._infos[connection] = info

        cp_id = self._cp_id_from_path(request.path)
        if cp_id is None:
            return self._reject(connection, info, 404, f"the endpoint is {ENDPOINT_PATH}/<charge point id>")
        info.cp_id = cp_id
        if self.passwords is None:
            info.username = self._basic_credentials(info.authorization)[0]
            return None
        if cp_id not in self.passwords:
            # OCPP-J 3.2: an unknown charge point identity gets 404.
            return self._reject(connection, info, 404, "unknown charge point")
        username, password = self._basic_credentials(info.authorization)
        info.username = username
        expected = self.passwords[cp_id]
        if username != cp_id or password is None or not hmac.compare_digest(
                password.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")):
            # OCPP-J 6.2.2 / Security WP profile 2: user = charge point id, password = AuthorizationKey.
            reason = "missing credentials" if info.authorization is None else "invalid credentials"
            response = self._reject(connection, info, 401, reason)
            response.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
            return response
        return None

    @staticmethod
    def _cp_id_from_path(path: str) -> str | None:
        raw = urlsplit(path).path
        prefix = ENDPOINT_PATH + "/"
        if not raw.startswith(prefix):
            return None
        segment = raw[len(prefix):]
        if not segment or "/" in segment:
            return None
        return unquote(segment)   # OCPP-J 3.1.1: the identity is percent-encoded

    @staticmethod
    def _basic_credentials(header: str | None) -> tuple[str | None, str | None]:
        if header is None:
            return None, None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return None, None
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        user, sep, password = decoded.partition(":")
        return (user, password) if sep else (user, None)

    def _reject(self, connection: ServerConnection, info: ConnectionInfo, status: int, reason: str) -> Response:
        info.reject_reason = reason
        log.info("handshake %s rejected: %d %s", info.path, status, reason)
        return connection.respond(status, reason + "\n")

    def _select_subprotocol(self, connection: ServerConnection, offered: Any) -> Any:
        if self.answer_without_subprotocol:
            return None   # OCPP-J 3.2: the "not agreed" answer; the handler closes right away
        if SUBPROTOCOL in offered:
            return SUBPROTOCOL
        info = self._infos.get(connection)
        reason = "missing subprotocol" if not offered else f"subprotocol {SUBPROTOCOL} not offered"
        if info is not None:
            info.reject_reason = reason
        raise NegotiationError(reason)   # HTTP 400 (field notes 1)

    def _process_response(self, connection: ServerConnection, request: Request, response: Response) -> None:
        info = self._infos.get(connection)
        if info is None:
            return
        info.http_status = response.status_code
        if response.status_code != 101:
            if info.reject_reason is None:
                info.reject_reason = bytes(response.body).decode("utf-8", "replace").strip()
            self._infos.pop(connection, None)
            self._notify()

    # --- connection -------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        info = self._infos.pop(ws, None)
        if info is None or info.cp_id is None:
            await ws.close(1011, "internal error")
            return
        cp_id = info.cp_id
        info.subprotocol = ws.subprotocol
        info.extensions = [ext.name for ext in ws.protocol.extensions]
        if ws.subprotocol != SUBPROTOCOL:
            info.closed_by = "server"
            await ws.close(1002, f"{SUBPROTOCOL} not agreed")
            info.closed_monotonic = self._monotonic()
            self._notify()
            return
        info.accepted = True
        live = _Live(ws, info, cp_id)
        old = self._active.get(cp_id)
        if old is not None and not old.closed:
            # A charge point has one connection; a new one means the old link is dead.
            old.info.closed_by = "replaced"
            old.ws.transport.abort()
        self._active[cp_id] = live
        log.info("%s connected (connection %d, %s, %s)", cp_id, info.connection_id, info.tls_version, info.cipher)
        self._notify()
        try:
            while True:
                if live.blackholed and not await self._until_unblocked(live):
                    break
                message = await ws.recv()
                if live.blackholed and not await self._until_unblocked(live):
                    break
                await self._on_message(live, message)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("%s: connection handler failed", cp_id)
        finally:
            self._closed(live)

    async def _until_unblocked(self, live: _Live) -> bool:
        """Wait until the blackhole ends (True) or the connection is gone (False)."""
        unblocked = asyncio.ensure_future(live.unblocked.wait())
        closed = asyncio.ensure_future(live.ws.wait_closed())
        try:
            await asyncio.wait({unblocked, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            unblocked.cancel()
            closed.cancel()
        return live.unblocked.is_set() and not live.closed

    def _closed(self, live: _Live) -> None:
        live.closed = True
        info = live.info
        info.closed_monotonic = self._monotonic()
        close_rcvd = live.ws.protocol.close_rcvd
        info.close_code = close_rcvd.code if close_rcvd is not None else None
        info.close_reason = close_rcvd.reason if close_rcvd is not None else None
        if info.closed_by is None:
            info.closed_by = "peer"
        for task in live.tasks:
            task.cancel()
        for out in list(self._outgoing.values()):
            if out.live is live and not out.future.done():
                out.future.set_exception(ConnectionError(f"{live.cp_id} disconnected during {out.action}"))
        if self._active.get(live.cp_id) is live:
            del self._active[live.cp_id]
        live.done.set()
        log.info("%s disconnected (connection %d, %s, code %s)", live.cp_id, info.connection_id,
                 info.closed_by, info.close_code)
        self._notify()

    def _live(self, cp_id: str) -> _Live:
        live = self._active.get(cp_id)
        if live is None or live.closed:
            raise ConnectionError(f"{cp_id} is not connected")
        return live

    async def _send(self, live: _Live, text: str, *, answer: bool) -> None:
        if live.closed or (answer and live.blackholed):
            return
        if self.record_messages:
            self.frames.append(FrameRecord(live.cp_id, "out", text, self._monotonic(), live.info.connection_id))
        try:
            await live.ws.send(text)
        except ConnectionClosed:
            if not answer:
                raise ConnectionError(f"{live.cp_id} disconnected") from None

    # --- incoming frames ----------------------------------------------------------------

    async def _on_message(self, live: _Live, message: str | bytes) -> None:
        now = self._monotonic()
        cp_id = live.cp_id
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        if self.record_messages:
            self.frames.append(FrameRecord(cp_id, "in", text, now, live.info.connection_id))
        if isinstance(message, bytes):
            self._violation(cp_id, "frame", "binary frame; OCPP-J 4.1.2 messages are UTF-8 JSON text")
            self._notify()
            return
        try:
            frame = checks.parse_frame(text)
        except checks.FrameProblem as problem:
            self._violation(cp_id, "frame", f"{problem.description}: {text[:200]}",
                            message_id=problem.message_id)
            self._notify()
            if problem.message_id is not None:
                await self._send_error(live, problem.message_id, problem.code, problem.description)
            return
        if isinstance(frame, checks.Call):
            await self._on_call(live, frame, now)
        else:
            self._on_answer(live, frame)
        self._notify()

    async def _on_call(self, live: _Live, call: checks.Call, now: float) -> None:
        cp_id, action, mid = live.cp_id, call.action, call.message_id
        self._log_message(cp_id, "<-", action, call.payload)
        if call.null_payload:
            self._violation(cp_id, "null-payload", "payload null; OCPP-J 4.2.1: send {}", action, mid)
        # OCPP-J 4.1.1: no new CALL before the previous one is answered or timed out.
        if live.inflight:
            oldest_s = now - min(live.inflight.values())
            if self.charger_call_timeout_s is None or oldest_s < self.charger_call_timeout_s:
                self._violation(cp_id, "concurrent-call",
                                f"CALL while {sorted(live.inflight)} unanswered (OCPP-J 4.1.1)", action, mid)
        # OCPP-J errata 3.7: ids unique per charge point across connections; errata 3.1
        # (2025-04): a resend of the same message may keep its id.
        fingerprint = hashlib.blake2b(
            (action + "\n" + json.dumps(call.payload, sort_keys=True, separators=(",", ":"))).encode(),
            digest_size=16).digest()
        seen = self._seen.setdefault(cp_id, {})
        previous = seen.get(mid)
        retry = previous is not None and previous.fingerprint == fingerprint
        if previous is not None and not retry:
            self._violation(cp_id, "duplicate-message-id", "message id reused for a different CALL", action, mid)
        entry = previous if retry and previous is not None else _Seen(fingerprint)
        seen[mid] = entry
        live.inflight[mid] = now
        rec = Received(cp_id, action, call.payload, mid, now, len(self.received), live.info.connection_id,
                       retry=retry)

        outcome: Payload | Awaitable[Payload] | CallErrorResponse
        try:
            outcome = self._answer(cp_id, call, entry if retry else None)
        except CallErrorResponse as err:
            outcome = err
        except Exception as exc:
            log.exception("%s: answering %s failed", cp_id, action)
            outcome = CallErrorResponse("InternalError", f"central system failed: {exc}")
        delay_s = self._delays.get(action, 0.0)
        if isinstance(outcome, (dict, CallErrorResponse)):
            self._settle(rec, entry, outcome)
        if self.record_messages:
            self.received.append(rec)
        self._notify()
        if delay_s > 0 or not isinstance(outcome, (dict, CallErrorResponse)):
            task = asyncio.ensure_future(self._answer_later(live, rec, entry, outcome, delay_s))
            live.tasks.add(task)
            task.add_done_callback(live.tasks.discard)
        else:
            await self._send_answer(live, rec)

    def _answer(self, cp_id: str, call: checks.Call, retry_of: _Seen | None) -> Payload | Awaitable[Payload]:
        """The answer to a CALL, or raise CallErrorResponse. Records violations."""
        action, payload, mid = call.action, call.payload, call.message_id
        if action not in checks.CP_TO_CS_ACTIONS:
            known = action in checks.CS_TO_CP_ACTIONS
            self._violation(cp_id, "unknown-action",
                            "a central-system-to-charge-point action" if known else "not an OCPP 1.6 action",
                            action, mid)
            if action not in self.responders:
                raise CallErrorResponse("NotSupported" if known else "NotImplemented",
                                        f"{action} is not a request a charge point sends")
        elif self.validate:
            problem = checks.validate(action, payload)
            if problem is not None:
                self._violation(cp_id, "schema", problem.description, action, mid)
                raise CallErrorResponse(problem.code, problem.description)
        if action in checks.CP_TO_CS_ACTIONS:
            late = checks.implausible_timestamps(action, payload, self.not_before)
            if late:
                self._violation(cp_id, "timestamp", f"before {self.not_before:%Y-%m-%d}: {', '.join(late)}",
                                action, mid)
        self._check_registration(cp_id, action, mid)
        if retry_of is not None and retry_of.response is not None:
            return retry_of.response   # answered before: same answer, no second booking
        failure = self._failures.get(action)
        if failure is not None and failure[0] > 0:
            failure[0] -= 1
            raise CallErrorResponse(failure[1], failure[2])
        responder = self.responders.get(action)
        if responder is not None:
            return responder(cp_id, payload)
        default = getattr(self, f"_default_{action}", None)
        if default is None:
            return {}
        result: Payload = default(cp_id, payload)
        return result

    def _check_registration(self, cp_id: str, action: str, mid: str) -> None:
        """OCPP 1.6 4.2: nothing but BootNotification until Accepted; while Pending only
        what a TriggerMessage asked for; OCPP-J errata 3.10: answer SecurityError."""
        status = self.registration.get(cp_id)
        triggered = self._triggered.get(cp_id, set())
        if action == "BootNotification":
            ready_at = self._not_before_boot.get(cp_id)
            if ready_at is not None and self._monotonic() < ready_at and action not in triggered:
                self._violation(cp_id, "boot-too-early",
                                f"BootNotification before the {status} interval elapsed (OCPP 1.6 4.2)", action, mid)
            return
        if not self.require_boot or status == "Accepted":
            return
        if status == "Pending" and action in triggered:
            return
        self._violation(cp_id, "not-accepted", f"{action} while registration is {status or 'unknown'} "
                        "(OCPP 1.6 4.2)", action, mid)
        raise CallErrorResponse("SecurityError", f"charge point not accepted (registration {status})")

    def _settle(self, rec: Received, seen: _Seen, outcome: Payload | CallErrorResponse) -> None:
        """Record the answer and do the bookkeeping of a successful CALL."""
        if isinstance(outcome, CallErrorResponse):
            rec.error_code, rec.error_description = outcome.code, outcome.description
            return
        rec.response = outcome
        if rec.retry and seen.response is not None:
            return   # booked when first answered
        seen.response = outcome
        try:
            self._book(rec)
        except Exception:
            log.exception("%s: bookkeeping of %s failed", rec.cp_id, rec.action)

    async def _answer_later(self, live: _Live, rec: Received, seen: _Seen,
                            outcome: Payload | Awaitable[Payload] | CallErrorResponse, delay_s: float) -> None:
        if not isinstance(outcome, (dict, CallErrorResponse)):
            try:
                result = await outcome
                if not isinstance(result, dict):
                    raise TypeError(f"responder returned {type(result).__name__}, not a dict")
                settled: Payload | CallErrorResponse = result
            except CallErrorResponse as err:
                settled = err
            except Exception as exc:
                log.exception("%s: answering %s failed", rec.cp_id, rec.action)
                settled = CallErrorResponse("InternalError", f"central system failed: {exc}")
            self._settle(rec, seen, settled)
            self._notify()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        await self._send_answer(live, rec)

    async def _send_answer(self, live: _Live, rec: Received) -> None:
        live.inflight.pop(rec.message_id, None)   # answered, or never will be: the charger times out
        if live.blackholed or live.closed:
            return   # a blackholed link answers nothing; a closed one cannot
        if rec.error_code is not None:
            await self._send_error(live, rec.message_id, rec.error_code, rec.error_description or "")
            return
        assert rec.response is not None
        try:
            text = json.dumps([checks.CALLRESULT, rec.message_id, rec.response])
        except (TypeError, ValueError) as exc:
            log.error("%s: %s answer is not JSON: %s", rec.cp_id, rec.action, exc)
            await self._send_error(live, rec.message_id, "InternalError", "central system answer not serialisable")
            return
        self._log_message(rec.cp_id, "->", f"{rec.action} result", rec.response)
        if rec.action == "BootNotification" and rec.response.get("status") in ("Pending", "Rejected"):
            # OCPP 1.6 4.2: no new BootNotification before `interval` from now.
            interval = rec.response.get("interval")
            if isinstance(interval, int) and interval > 0:
                self._not_before_boot[rec.cp_id] = self._monotonic() + interval - 0.001
        await self._send(live, text, answer=True)

    async def _send_error(self, live: _Live, message_id: str, code: str, description: str) -> None:
        live.inflight.pop(message_id, None)
        self._log_message(live.cp_id, "->", f"CALLERROR {code}", {"description": description})
        await self._send(live, json.dumps([checks.CALLERROR, message_id, code, description, {}]), answer=True)

    def _on_answer(self, live: _Live, frame: checks.CallResult | checks.CallError) -> None:
        cp_id, mid = live.cp_id, frame.message_id
        out = self._outgoing.get(mid)
        action: str | None
        if out is not None and out.live is live:
            action = out.action
        elif mid in self._raw_ids.get(cp_id, {}):
            action = self._raw_ids[cp_id].pop(mid)
        elif mid in self._timed_out:
            log.info("%s: late answer to %s, after our timeout", cp_id, mid)
            return
        elif self._raw_unmatched.get(cp_id, 0) > 0:
            self._raw_unmatched[cp_id] -= 1
            return
        else:
            self._violation(cp_id, "unexpected-result", "answer to a CALL we never sent", message_id=mid)
            return
        if isinstance(frame, checks.CallError):
            self._log_message(cp_id, "<-", f"CALLERROR {frame.code} to {action}", {"description": frame.description})
            if out is not None and not out.future.done():
                out.future.set_exception(CallErrorResponse(frame.code, frame.description, frame.details))
            return
        self._log_message(cp_id, "<-", f"{action} result", frame.payload)
        if frame.null_payload:
            self._violation(cp_id, "null-payload", "CALLRESULT payload null; OCPP-J 4.2.2: send {}", action, mid)
        if self.validate and action is not None and checks.has_schema(f"{action}Response"):
            problem = checks.validate(f"{action}Response", frame.payload)
            if problem is not None:
                self._violation(cp_id, "response-schema", problem.description, action, mid)
        if out is not None:
            self._after_result(out, frame.payload)
            if not out.future.done():
                out.future.set_result(frame.payload)

    def _after_result(self, out: _Outgoing, result: Payload) -> None:
        """Effects of the charger's answers, applied before the next frame is read."""
        accepted = result.get("status") == "Accepted"
        if out.action in ("TriggerMessage", "ExtendedTriggerMessage") and accepted:
            allowed = _TRIGGERED_ACTION.get(str(out.payload.get("requestedMessage")))
            if allowed is not None:
                self._triggered.setdefault(out.cp_id, set()).add(allowed)
        if (out.action == "ChangeConfiguration" and accepted and self.passwords is not None
                and out.payload.get("key") == "AuthorizationKey"):
            # OCPP-J 6.2.2: once Accepted, the old credentials are no longer accepted.
            self.passwords[out.cp_id] = str(out.payload.get("value"))
            log.info("%s: password changed by AuthorizationKey", out.cp_id)

    # --- default answers and bookkeeping ----------------------------------------------

    def _now_iso(self) -> str:
        return checks.iso8601(dt.datetime.fromtimestamp(self._wall_time() + self.time_offset_s, dt.UTC))

    def _id_tag_info(self, id_tag: Any, table: dict[str, str | Payload]) -> Payload:
        value = table.get(id_tag) if isinstance(id_tag, str) else None
        if value is None and isinstance(id_tag, str):
            value = self.authorize.get(id_tag)
        if value is None:
            value = self.default_id_tag_status
        return dict(value) if isinstance(value, dict) else {"status": value}

    def _default_BootNotification(self, cp_id: str, payload: Payload) -> Payload:
        interval = self.heartbeat_interval_s if self.boot_status == "Accepted" else self.boot_retry_interval_s
        return {"status": self.boot_status, "currentTime": self._now_iso(), "interval": interval}

    def _default_Heartbeat(self, cp_id: str, payload: Payload) -> Payload:
        return {"currentTime": self._now_iso()}

    def _default_Authorize(self, cp_id: str, payload: Payload) -> Payload:
        return {"idTagInfo": self._id_tag_info(payload.get("idTag"), self.authorize)}

    def _default_StartTransaction(self, cp_id: str, payload: Payload) -> Payload:
        for tx in self.transactions.values():
            if tx.cp_id == cp_id and tx.stop is None and tx.start == payload:
                # The same start again under a new message id (its .conf was lost):
                # the same transaction, not a second one.
                return {"transactionId": tx.transaction_id,
                        "idTagInfo": self._id_tag_info(payload.get("idTag"), self.start_status)}
        tx_id = self.next_transaction_id
        self.next_transaction_id += 1
        return {"transactionId": tx_id, "idTagInfo": self._id_tag_info(payload.get("idTag"), self.start_status)}

    def _default_StopTransaction(self, cp_id: str, payload: Payload) -> Payload:
        if "idTag" in payload:
            return {"idTagInfo": self._id_tag_info(payload.get("idTag"), self.authorize)}
        return {}

    def _default_DataTransfer(self, cp_id: str, payload: Payload) -> Payload:
        return {"status": self.data_transfer_status}

    def _default_SignCertificate(self, cp_id: str, payload: Payload) -> Payload:
        return {"status": "Accepted"}

    def _book(self, rec: Received) -> None:
        cp_id, payload, response, mid = rec.cp_id, rec.payload, rec.response or {}, rec.message_id
        if rec.action == "BootNotification":
            status = response.get("status")
            if isinstance(status, str):
                self.registration[cp_id] = status
                self._triggered.pop(cp_id, None)
                if status == "Accepted":
                    self._not_before_boot.pop(cp_id, None)
        elif rec.action == "StatusNotification":
            connector = payload.get("connectorId")
            if isinstance(connector, int):
                self.statuses.setdefault(cp_id, {})[connector] = payload
        elif rec.action == "StartTransaction":
            tx_id = response.get("transactionId")
            if not isinstance(tx_id, int):
                return
            known = self.transactions.get(tx_id)
            if known is not None and known.cp_id == cp_id and known.start == payload:
                return   # a resend of this start
            connector = payload.get("connectorId")
            for other in self.transactions.values():
                if other.cp_id == cp_id and other.connector_id == connector and other.stop is None:
                    self._violation(cp_id, "transaction-already-open",
                                    f"connector {connector} still has transaction {other.transaction_id} open",
                                    rec.action, mid)
            self.transactions[tx_id] = TransactionRecord(tx_id, cp_id, connector, payload.get("idTag"), payload,
                                                         start_message_id=mid)
        elif rec.action == "StopTransaction":
            tx_id = payload.get("transactionId")
            tx = self.transactions.get(tx_id) if isinstance(tx_id, int) else None
            if tx is None or tx.cp_id != cp_id:
                self._violation(cp_id, "unknown-transaction", f"StopTransaction for unknown transaction {tx_id}",
                                rec.action, mid)
            elif tx.stop == payload:
                pass   # the same stop again under a new message id (its .conf was lost)
            elif tx.stop is not None:
                self._violation(cp_id, "double-stop", f"transaction {tx_id} was already stopped by "
                                f"{tx.stop_message_id}", rec.action, mid)
            else:
                tx.stop, tx.stop_message_id = payload, mid
                start_wh, stop_wh = tx.start.get("meterStart"), payload.get("meterStop")
                if isinstance(start_wh, int) and isinstance(stop_wh, int) and stop_wh < start_wh:
                    self._violation(cp_id, "meter-decreased", f"meterStop {stop_wh} < meterStart {start_wh}",
                                    rec.action, mid)
        elif rec.action == "MeterValues" and "transactionId" in payload:
            tx_id = payload.get("transactionId")
            tx = self.transactions.get(tx_id) if isinstance(tx_id, int) else None
            if tx is None or tx.cp_id != cp_id:
                self._violation(cp_id, "unknown-transaction", f"MeterValues for unknown transaction {tx_id}",
                                rec.action, mid)
            elif tx.stop is not None:
                self._violation(cp_id, "meter-values-after-stop",
                                f"MeterValues for transaction {tx_id} after its StopTransaction", rec.action, mid)
            elif payload not in tx.meter_values:   # an identical resend is not new data
                tx.meter_values.append(payload)

    # --- plumbing ----------------------------------------------------------------------

    def _violation(self, cp_id: str | None, kind: str, detail: str, action: str | None = None,
                   message_id: str | None = None) -> None:
        v = Violation(cp_id, kind, detail, action, message_id, self._monotonic())
        self.violations.append(v)
        log.warning("violation %s", v)

    def _log_message(self, cp_id: str, arrow: str, what: str, payload: Payload) -> None:
        if self.log_messages:
            log.info("%s %s %s %s", cp_id, arrow, what, json.dumps(_redact(what, payload)))
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %s %s", cp_id, arrow, what, json.dumps(_redact(what, payload)))

    def _notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def _wait(self, check: Callable[[], _T | None], timeout_s: float, what: str) -> _T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            result = check()
            if result is not None:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = ", ".join(f"{r.cp_id}:{r.action}" for r in self.received[-8:])
                raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}; last CALLs: [{recent}]")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(waiter)

