"""The connection manager: the only module that touches websockets.

One loop, forever until stop():

    wait for a network link -> NTP (before every TLS handshake, interfaces.md §4)
    -> wss handshake (subprotocol ocpp1.6, HTTP Basic auth, Security WP §2.4)
    -> session.attach(send) -> feed every text frame to the session
    -> on close or error: session.detach(), back off, again.

Liveness: websockets' keepalive pings every `ping_interval_s()` seconds (the live
WebSocketPingInterval key, read at each connect; 0 disables it, OCPP 1.6 §9.1) and fails
the connection when no pong arrives within `stale_timeout_s`, so a half-open socket
(server gone without a FIN) is detected within ping interval + stale timeout + close
timeout. A change of the active network link (WiFi -> GSM failover) leaves the old
socket half-open as well, so the socket is dropped as soon as the change is seen: a backend
that reports link changes calls `link_changed()` (construct with `link_poll_s=None`: no
polling); otherwise `active_link()` is polled every `link_poll_s` (sysfs operstate has no
event without netlink), which bounds how long a failover goes unnoticed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from chargepoint.clock import Clock, EventTime
from chargepoint.config import Settings
from chargepoint.ntp import sync_clock
from chargepoint.transport.backoff import Backoff
from chargepoint.transport.tls import build_client_ssl_context

log = logging.getLogger("chargepoint.transport")

SUBPROTOCOL = "ocpp1.6"
MAX_MESSAGE_BYTES = 1024 * 1024

CONNECTED = "connected"
CONNECTING = "connecting"
OFFLINE = "offline"

# Security WP §8 security events the link can detect.
EVENT_FAILED_AUTH = "FailedToAuthenticationAtCentralSystem"
EVENT_INVALID_CS_CERT = "InvalidCentralSystemCertificate"
EVENT_INVALID_TLS_VERSION = "InvalidTLSVersion"
EVENT_INVALID_TLS_CIPHER = "InvalidTLSCipherSuite"

_TLS_VERSION_REASONS = {"UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "WRONG_SSL_VERSION",
                        "NO_PROTOCOLS_AVAILABLE"}
_TLS_CIPHER_REASONS = {"NO_SHARED_CIPHER", "SSLV3_ALERT_HANDSHAKE_FAILURE", "NO_CIPHERS_AVAILABLE",
                       "TLSV1_ALERT_INSUFFICIENT_SECURITY"}

Send = Callable[[str], Awaitable[None]]


class SessionPort(Protocol):
    """What the link needs of chargepoint.ocppj.session.Session."""

    def attach(self, send: Send) -> None: ...

    def detach(self) -> None: ...

    async def feed(self, text: str) -> None: ...

    @property
    def connected(self) -> bool: ...


def basic_auth_header(charge_point_id: str, password: str) -> str:
    """Security WP §2.3 remark / A00.FR.303: user = the charge point identity (as given,
    not percent-encoded), password = AuthorizationKey."""
    token = base64.b64encode(f"{charge_point_id}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


class Link:
    def __init__(self, *, settings: Settings, clock: Clock, session: SessionPort,
                 password_provider: Callable[[], str | None],
                 ping_interval_s: Callable[[], float],
                 ntp_sync: Callable[[], Awaitable[object]] | None = None,
                 active_link: Callable[[], str | None] | None = None,
                 on_state_change: Callable[[str], None] | None = None,
                 on_security_event: Callable[[str, str], None] | None = None,
                 ssl_context_factory: Callable[[], ssl.SSLContext] | None = None,
                 backoff: Backoff | None = None,
                 stale_timeout_s: float = 20.0,
                 close_timeout_s: float = 2.0,
                 open_timeout_s: float = 30.0,
                 stable_after_s: float = 60.0,
                 link_poll_s: float | None = 1.0) -> None:
        self._url = settings.ocpp.endpoint_url
        # Defensive: Settings already rejects ws:// (interfaces.md §3); never connect without TLS.
        if urlsplit(self._url).scheme != "wss":
            raise ValueError("the central system URL must be wss:// (the charger never connects without TLS)")
        self._settings = settings
        self._clock = clock
        self._session = session
        self._password_provider = password_provider
        self._ping_interval_s = ping_interval_s
        self._ntp_sync = ntp_sync or (lambda: sync_clock(clock, settings.ntp))
        self._active_link = active_link
        self._on_state_change = on_state_change
        self._on_security_event = on_security_event
        self._ssl_context_factory = ssl_context_factory or (lambda: build_client_ssl_context(settings.tls))
        self._backoff = backoff or Backoff()
        self._stale_timeout_s = stale_timeout_s
        self._close_timeout_s = close_timeout_s
        self._open_timeout_s = open_timeout_s
        self._stable_after_s = stable_after_s
        self._link_poll_s = link_poll_s

        self._state = OFFLINE
        self._link: str | None = None
        self._connected_at: EventTime | None = None
        self.last_error: str | None = None
        self.attempts = 0
        self._wake = asyncio.Event()
        self._watching_link = False   # waiting in _wait_for_link / _watch: a link change wakes us
        self._reconnect_requested = False
        self._stopping = False
        self._run_task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None

    # ------------------------------------------------------------------ public

    @property
    def state(self) -> str:
        return self._state

    @property
    def link(self) -> str | None:
        """The network link the current connection (or attempt) uses."""
        return self._link

    @property
    def connected_since(self) -> datetime | None:
        return None if self._connected_at is None else self._clock.resolve(self._connected_at)

    def stats(self) -> dict[str, Any]:
        since = self.connected_since
        return {
            "state": self._state,
            "link": self._link,
            "connected_since": None if since is None else Clock.iso8601(since),
            "last_error": self.last_error,
            "attempts": self.attempts,
        }

    def ping_interval_changed(self) -> None:
        """WebSocketPingInterval changed (§9.1.34): a new positive interval applies to the live
        connection (websockets reads it before each keepalive ping); switching pings on or off
        needs a new connection."""
        ws = self._ws
        if ws is None or self._state != CONNECTED:
            return
        new_s = self._ping_interval_s()
        if new_s > 0 and ws.ping_interval is not None:
            ws.ping_interval = new_s
        elif (new_s > 0) != (ws.ping_interval is not None):
            self.request_reconnect()

    def link_changed(self) -> None:
        """The network backend reports that a link went up or down: look at `active_link()` now.
        Only a wait for a link (or a connection watching its link) is cut short, never a back-off."""
        if self._watching_link:
            self._wake.set()

    def request_reconnect(self) -> None:
        """Close now and reconnect at once (AuthorizationKey changed, Security WP A01;
        the active network link changed)."""
        self._reconnect_requested = True
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        task = self._run_task
        if task is None or task.done():
            return
        done, _ = await asyncio.wait({task}, timeout=self._close_timeout_s + 1.0)
        if not done:
            # Stuck in NTP or an opening handshake: no need to wait for those.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        if self._run_task is not None and not self._run_task.done():
            raise RuntimeError("Link.run() is already running")
        self._run_task = asyncio.current_task()
        try:
            while not self._stopping:
                link = await self._wait_for_link()
                if self._stopping:
                    break
                self._link = link
                self._reconnect_requested = False
                self._wake.clear()
                self.attempts += 1
                self._set_state(CONNECTING)
                if not await self._sync_time():
                    await self._pause(self._backoff.next_delay_s())
                    continue
                up_s, reconnect_now = await self._connect_once(link)
                if up_s >= self._stable_after_s:
                    self._backoff.reset()
                if not reconnect_now and not self._stopping:
                    await self._pause(self._backoff.next_delay_s())
        finally:
            self._set_state(OFFLINE)

    # ------------------------------------------------------------------ steps

    def _set_state(self, state: str) -> None:
        if state == self._state:
            return
        self._state = state
        if self._on_state_change is not None:
            try:
                self._on_state_change(state)
            except Exception:
                log.exception("link: state-change listener failed")

    def _security_event(self, kind: str, tech_info: str) -> None:
        if self._on_security_event is not None:
            try:
                self._on_security_event(kind, tech_info)
            except Exception:
                log.exception("link: security-event listener failed")

    def _current_link(self) -> str | None:
        if self._active_link is None:
            return None
        try:
            return self._active_link()
        except Exception:
            log.exception("link: active_link() failed")
            return None

    async def _wait_wake(self, timeout_s: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()

    async def _wait_link_or_wake(self) -> None:
        """Until a request or a link change (reported, or seen by the next poll)."""
        self._watching_link = True
        try:
            await self._wait_wake(self._link_poll_s)
        finally:
            self._watching_link = False

    async def _wait_for_link(self) -> str | None:
        """The active network link; waits while every link is down (no point in NTP then)."""
        if self._active_link is None:
            return None
        logged = False
        while not self._stopping:
            name = self._current_link()
            if name is not None:
                return name
            if not logged:
                log.info("link: no network link up; waiting")
                logged = True
            self._link = None
            self._set_state(OFFLINE)
            self._wake.clear()
            await self._wait_link_or_wake()
        return None

    async def _pause(self, delay_s: float) -> None:
        """Back off, unless a reconnect is requested meanwhile."""
        self._set_state(OFFLINE)
        if self._reconnect_requested or self._stopping:
            return
        log.info("link: reconnecting in %.1f s", delay_s)
        await self._wait_wake(delay_s)

    async def _sync_time(self) -> bool:
        """NTP before every TLS handshake. Without an answer, go on only if the system
        clock is plausible: certificate validity cannot be checked at 1970."""
        try:
            await self._ntp_sync()
        except Exception as exc:
            log.warning("link: NTP sync failed: %s", exc)
        if self._clock.plausible:
            return True
        self.last_error = "clock not synchronised (no NTP answer) and the system time is implausible"
        log.warning("link: %s; retrying NTP before connecting", self.last_error)
        return False

    async def _connect_once(self, link: str | None) -> tuple[float, bool]:
        """One connection: handshake, serve until it ends. Returns (seconds it was up,
        reconnect at once without back-off)."""
        try:
            ssl_context = self._ssl_context_factory()
            password = self._password_provider()
            ping_s = self._ping_interval_s()
        except Exception as exc:
            self.last_error = f"cannot prepare the connection: {type(exc).__name__}: {exc}"
            log.error("link: %s", self.last_error)
            return 0.0, False
        headers: dict[str, str] = {}
        if password:
            headers["Authorization"] = basic_auth_header(self._settings.ocpp.charge_point_id, password)
        try:
            ws = await connect(
                self._url,
                ssl=ssl_context,
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                additional_headers=headers,
                # websockets would honour *_PROXY from the environment; only use a configured proxy.
                proxy=self._settings.tls.proxy,
                ping_interval=ping_s if ping_s > 0 else None,
                ping_timeout=self._stale_timeout_s,
                close_timeout=self._close_timeout_s,
                open_timeout=self._open_timeout_s,
                compression=None,
                max_size=MAX_MESSAGE_BYTES,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._record_failure(exc)
            return 0.0, False
        try:
            if ws.subprotocol != SUBPROTOCOL:
                # OCPP-J §3.2 (errata): a server that does not agree answers without the
                # subprotocol header; without it there is no OCPP session to have.
                self.last_error = f"central system did not accept subprotocol {SUBPROTOCOL}"
                log.error("link: %s", self.last_error)
                await ws.close(code=1002, reason="subprotocol ocpp1.6 required")
                return 0.0, False
            return await self._serve(ws, link)
        finally:
            if ws.transport is not None and not ws.transport.is_closing():
                ws.transport.abort()

    async def _serve(self, ws: ClientConnection, link: str | None) -> tuple[float, bool]:
        started_s = self._clock.monotonic_s()
        self._connected_at = self._clock.event_time()
        self.last_error = None
        ssl_object = ws.transport.get_extra_info("ssl_object")
        version = ssl_object.version() if ssl_object is not None else "?"
        cipher = ssl_object.cipher()[0] if ssl_object is not None else "?"
        log.info("link: connected to %s%s (%s %s, ping %s s)", self._url, f" via {link}" if link else "",
                 version, cipher, ws.ping_interval or "off")
        self._session.attach(self._sender(ws))
        self._ws = ws
        self._set_state(CONNECTED)
        reader = asyncio.create_task(self._read(ws), name="link-reader")
        watcher = asyncio.create_task(self._watch(link), name="link-watcher")
        reconnect_now = False
        reason: str | None = None
        try:
            await asyncio.wait({reader, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if watcher.done() and not reader.done():
                reconnect_now = True
                if watcher.result() == "link":
                    # The old route is gone: a close handshake would only wait for the timeout.
                    reason = self.last_error = f"network link changed from {link} to {self._current_link()}"
                    ws.transport.abort()
                else:
                    reason = "stopping" if self._stopping else "reconnect requested"
                    await ws.close()
            closed = await reader
            reason = reason or closed
            if not reconnect_now:
                self.last_error = closed
        finally:
            for task in (reader, watcher):
                task.cancel()
            await asyncio.gather(reader, watcher, return_exceptions=True)
            self._session.detach()
            self._connected_at = None
            up_s = self._clock.monotonic_s() - started_s
            if not self._stopping:
                self._set_state(CONNECTING if reconnect_now else OFFLINE)
        log.info("link: disconnected after %.0f s: %s", up_s, reason)
        return up_s, reconnect_now

    @staticmethod
    def _sender(ws: ClientConnection) -> Send:
        async def send(text: str) -> None:
            try:
                await ws.send(text)
            except ConnectionClosed as exc:
                raise ConnectionError(f"websocket closed: {exc}") from None
        return send

    async def _read(self, ws: ClientConnection) -> str:
        """Feed text frames to the session until the connection ends; returns why it ended."""
        try:
            async for message in ws:
                if not isinstance(message, str):
                    log.warning("link: ignoring a binary frame (OCPP-J uses text frames)")
                    continue
                try:
                    await self._session.feed(message)
                except Exception:
                    log.exception("link: the session failed on a frame")
            detail = f": {ws.close_reason!r}" if ws.close_reason else ""
            return f"closed by the central system (code {ws.close_code}{detail})"
        except ConnectionClosed as exc:
            return f"connection lost: {str(exc)!r}"

    async def _watch(self, link: str | None) -> str:
        """Returns "request" (reconnect or stop requested) or "link" (active link changed)."""
        while True:
            self._wake.clear()   # the flags below say what a wake was for
            if self._stopping or self._reconnect_requested:
                return "request"
            if self._active_link is not None and self._current_link() != link:
                return "link"
            if self._active_link is None:
                await self._wait_wake(None)   # no link to watch: only a request ends the wait
            else:
                await self._wait_link_or_wake()

    def _record_failure(self, exc: Exception) -> None:
        """Name the failure for the log and `status` (never a secret: no header is quoted)."""
        if isinstance(exc, InvalidStatus):
            code = exc.response.status_code
            if code == 401:
                self.last_error = "authorization rejected (HTTP 401): check the password / AuthorizationKey"
                log.error("link: %s", self.last_error)
                self._security_event(EVENT_FAILED_AUTH, "HTTP 401")
                return
            self.last_error = f"handshake refused: HTTP {code}"
        elif isinstance(exc, ssl.SSLCertVerificationError):
            # A00.FR.309/310: security event, connection terminated.
            self.last_error = f"central system certificate rejected: {exc.verify_message}"
            self._security_event(EVENT_INVALID_CS_CERT, exc.verify_message or str(exc))
        elif isinstance(exc, ssl.SSLError):
            reason = exc.reason or ""
            self.last_error = f"TLS handshake failed: {reason or exc}"
            if reason in _TLS_VERSION_REASONS:
                self._security_event(EVENT_INVALID_TLS_VERSION, reason)  # A00.FR.315
            elif reason in _TLS_CIPHER_REASONS:
                self._security_event(EVENT_INVALID_TLS_CIPHER, reason)  # A00.FR.322
        elif isinstance(exc, TimeoutError):
            self.last_error = "opening handshake timed out"
        elif isinstance(exc, OSError):
            self.last_error = f"cannot connect: {exc.strerror or exc}"
        elif isinstance(exc, InvalidHandshake):
            self.last_error = f"handshake failed: {exc}"
        else:
            self.last_error = f"connect failed: {type(exc).__name__}: {exc}"
        log.warning("link: %s", self.last_error)
