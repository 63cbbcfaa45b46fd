"""The link manager against a real websockets TLS server on loopback (interfaces.md §4).

The central system here is a few lines of websockets.asyncio.server with TLS, checking
HTTP Basic auth and the ocpp1.6 subprotocol in process_request; the NTP server is the
real UDP responder from tests/support; the half-open test goes through a TCP relay
that can blackhole its connections (keeps the sockets open, drops the data).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.proxy import get_proxy
from websockets.uri import parse_uri

from chargepoint.clock import Clock
from chargepoint.config import ConfigError, Settings, parse_settings
from chargepoint.devtools.pki import Pki
from chargepoint.ocppj.session import Session
from chargepoint.transport.backoff import Backoff
from chargepoint.transport.link import CONNECTED, EVENT_FAILED_AUTH, EVENT_INVALID_CS_CERT, Link
from tests.support.ntp_server import NtpServer

WAIT_S = 20.0
PASSWORD = "0123456789abcdef"


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Wait (generously: the machine is noisy) until predicate() holds."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls state owned by other tasks and threads
            await asyncio.sleep(0.02)
    assert predicate(), what


# ---------------------------------------------------------------------------- stand-ins


class FakeSession:
    """The interface the link needs of chargepoint.ocppj.session.Session."""

    def __init__(self) -> None:
        self.send: Callable[[str], Awaitable[None]] | None = None
        self.attaches = 0
        self.detaches = 0
        self.fed: list[str] = []

    def attach(self, send: Callable[[str], Awaitable[None]]) -> None:
        self.send = send
        self.attaches += 1

    def detach(self) -> None:
        self.send = None
        self.detaches += 1

    async def feed(self, text: str) -> None:
        self.fed.append(text)

    @property
    def connected(self) -> bool:
        return self.send is not None


class StubCsms:
    """A TLS websocket central system; restartable on the same port."""

    def __init__(self, pki: Pki, *, passwords: set[str] | None = None, require_subprotocol: bool = True,
                 ntp: NtpServer | None = None) -> None:
        self.pki = pki
        self.passwords = passwords
        self.require_subprotocol = require_subprotocol
        self.ntp = ntp
        self.port = 0
        self.requests: list[Request] = []
        self.ntp_queries_at_handshake: list[int] = []
        self.connections: list[ServerConnection] = []
        self.received: list[str] = []
        self._server: Server | None = None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.requests.append(request)
        if self.ntp is not None:
            self.ntp_queries_at_handshake.append(self.ntp.queries)
        if self.passwords is not None:
            auth = request.headers.get("Authorization", "")
            users = {f"Basic {base64.b64encode(f'{u}:{p}'.encode()).decode()}"
                     for u in ("CP-0001", "CP/01 x") for p in self.passwords}
            if auth not in users:
                return connection.respond(401, "Unauthorized\n")
        if self.require_subprotocol and "ocpp1.6" not in request.headers.get("Sec-WebSocket-Protocol", ""):
            return connection.respond(400, "subprotocol ocpp1.6 required\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                self.received.append(str(message))
                frame = json.loads(message)
                if frame[0] == 2 and frame[2] == "Heartbeat":  # answer like a central system
                    await ws.send(json.dumps([3, frame[1], {"currentTime": "2026-11-24T10:00:00.000Z"}]))

    async def start(self) -> StubCsms:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        self._server = await serve(self._handler, "127.0.0.1", self.port, ssl=ctx,
                                   subprotocols=["ocpp1.6"] if self.require_subprotocol else None,  # type: ignore[list-item]
                                   process_request=self._process_request, ping_interval=None, close_timeout=1)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def handshakes(self) -> int:
        """Upgrades completed (requests that got a websocket)."""
        return len(self.connections)


class BlackholeRelay:
    """TCP relay to the central system; blackhole() silences existing connections
    (sockets stay open, data is dropped): a half-open path after a WAN change."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._holes: list[dict[str, bool]] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        hole = {"on": False}
        self._holes.append(hole)
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if not hole["on"]:
                    dst.write(data)
                    await dst.drain()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            w.close()

    async def start(self) -> BlackholeRelay:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def blackhole(self) -> None:
        for hole in self._holes:
            hole["on"] = True

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()


# ---------------------------------------------------------------------------- fixtures


def make_settings(pki: Pki, port: int, ntp: NtpServer, *, url: str | None = None) -> Settings:
    return parse_settings({
        "ocpp": {"url": url or f"wss://127.0.0.1:{port}/ocpp", "charge_point_id": "CP-0001", "password": PASSWORD},
        "tls": {"ca_file": str(pki.ca_cert)},
        "ntp": {"servers": [ntp.address], "set_clock": False, "timeout_s": 0.2},
    })


@pytest.fixture
def ntp() -> Iterator[NtpServer]:
    with NtpServer(offset_s=0.0) as server:
        yield server


@pytest_asyncio.fixture
async def csms(pki: Pki, ntp: NtpServer) -> AsyncIterator[StubCsms]:
    server = await StubCsms(pki, passwords={PASSWORD, "password"}, ntp=ntp).start()
    yield server
    await server.stop()


class Links:
    """Starts Link.run() tasks; stops them all at teardown (and checks they stop)."""

    def __init__(self) -> None:
        self.started: list[tuple[Link, Any, asyncio.Task[None]]] = []

    def start(self, settings: Settings, *, clock: Clock | None = None,
              password: Callable[[], str | None] = lambda: "password",
              ping_interval_s: Callable[[], float] = lambda: 0.0, **kwargs: Any) -> tuple[Link, FakeSession]:
        session = FakeSession()
        return self.start_with(session, settings, clock=clock, password=password, ping_interval_s=ping_interval_s,
                               **kwargs), session

    def start_with(self, session: Any, settings: Settings, *, clock: Clock | None = None,
                   password: Callable[[], str | None] = lambda: "password",
                   ping_interval_s: Callable[[], float] = lambda: 0.0, **kwargs: Any) -> Link:
        kwargs.setdefault("backoff", Backoff(initial_s=0.05, max_s=0.2))
        kwargs.setdefault("link_poll_s", 0.05)
        kwargs.setdefault("close_timeout_s", 0.5)
        kwargs.setdefault("stale_timeout_s", 0.5)
        link = Link(settings=settings, clock=clock or Clock(), session=session, password_provider=password,
                    ping_interval_s=ping_interval_s, **kwargs)
        task = asyncio.create_task(link.run())
        self.started.append((link, session, task))
        return link


@pytest_asyncio.fixture
async def links() -> AsyncIterator[Links]:
    holder = Links()
    yield holder
    for link, session, task in holder.started:
        await link.stop()
        await asyncio.wait_for(task, WAIT_S)
        assert link.state == "offline"
        assert not session.connected


# ---------------------------------------------------------------------------- tests


@pytest.mark.asyncio
async def test_connects_over_wss_with_ocpp16_and_the_exact_basic_auth_header(
        pki: Pki, ntp: NtpServer, csms: StubCsms, links: Links) -> None:
    states: list[str] = []
    link, session = links.start(make_settings(pki, csms.port, ntp), on_state_change=states.append)
    await until(lambda: link.state == CONNECTED, "connected")
    request = csms.requests[0]
    assert request.path == "/ocpp/CP-0001"
    # Security WP §2.3: base64("CP-0001:password"), computed by hand.
    assert request.headers["Authorization"] == "Basic Q1AtMDAwMTpwYXNzd29yZA=="
    assert request.headers["Sec-WebSocket-Protocol"] == "ocpp1.6"
    assert "Sec-WebSocket-Extensions" not in request.headers  # no permessage-deflate
    assert states[:2] == ["connecting", "connected"]
    ws = csms.connections[0]
    assert ws.subprotocol == "ocpp1.6"
    assert ws.transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
    # Frames flow both ways through the session.
    await ws.send('[2,"1","Heartbeat",{}]')
    await until(lambda: session.fed == ['[2,"1","Heartbeat",{}]'], "frame fed to the session")
    assert session.send is not None
    await session.send('[3,"1",{}]')
    await until(lambda: csms.received == ['[3,"1",{}]'], "frame sent by the session")
    stats = link.stats()
    assert stats["state"] == "connected" and stats["attempts"] == 1 and stats["last_error"] is None
    assert stats["connected_since"] is not None and stats["connected_since"].endswith("Z")


@pytest.mark.asyncio
async def test_url_path_ends_with_the_percent_encoded_charge_point_id_ocppj_3_1_1(
        pki: Pki, ntp: NtpServer, csms: StubCsms, links: Links) -> None:
    settings = make_settings(pki, csms.port, ntp)
    settings = dataclasses.replace(settings, ocpp=dataclasses.replace(settings.ocpp, charge_point_id="CP/01 x"))
    link, _ = links.start(settings)
    await until(lambda: link.state == CONNECTED, "connected")
    assert csms.requests[0].path == "/ocpp/CP%2F01%20x"
    # The Basic-auth user is the identity itself, not its URL encoding (A00.FR.303).
    assert csms.requests[0].headers["Authorization"] == "Basic " + base64.b64encode(b"CP/01 x:password").decode()


@pytest.mark.asyncio
async def test_ntp_queried_before_each_reconnect_across_server_restarts(
        pki: Pki, ntp: NtpServer, csms: StubCsms, links: Links) -> None:
    link, session = links.start(make_settings(pki, csms.port, ntp))
    await until(lambda: link.state == CONNECTED, "first connection")
    for restart in range(1, 4):
        await csms.stop()
        await until(lambda: link.state != CONNECTED, "disconnect noticed")
        await csms.start()
        expected = restart + 1
        await until(lambda: csms.handshakes == expected and link.state == CONNECTED,  # noqa: B023
                    f"reconnect {restart}")
    assert session.attaches == 4 and session.detaches == 3
    counts = csms.ntp_queries_at_handshake
    # interfaces.md §4: a new NTP query before every handshake.
    assert counts[0] >= 1
    assert all(later > earlier for earlier, later in itertools.pairwise(counts)), counts


@pytest.mark.asyncio
async def test_half_open_socket_detected_by_keepalive_and_link_reconnects(
        pki: Pki, ntp: NtpServer, csms: StubCsms, links: Links) -> None:
    relay = await BlackholeRelay(csms.port).start()
    try:
        link, session = links.start(make_settings(pki, relay.port, ntp), ping_interval_s=lambda: 0.3,
                                    stale_timeout_s=0.5)
        await until(lambda: link.state == CONNECTED, "connected through the relay")
        relay.blackhole()  # the server vanishes without a FIN
        await until(lambda: session.detaches == 1, "half-open socket detected")
        assert "keepalive" in (link.last_error or "") or "lost" in (link.last_error or "")
        await until(lambda: csms.handshakes == 2 and link.state == CONNECTED, "reconnected")
    finally:
        await relay.stop()


@pytest.mark.asyncio
async def test_password_change_then_request_reconnect_uses_the_new_password_security_wp_a01(
        pki: Pki, ntp: NtpServer, csms: StubCsms, links: Links) -> None:
    password = ["password"]
    link, _ = links.start(make_settings(pki, csms.port, ntp), password=lambda: password[0],
                          backoff=Backoff(initial_s=30.0, max_s=60.0))  # a reconnect must not wait for back-off
    await until(lambda: link.state == CONNECTED, "connected")
    password[0] = PASSWORD
    link.request_reconnect()
    await until(lambda: csms.handshakes == 2 and link.state == CONNECTED, "reconnected")
    assert csms.requests[-1].headers["Authorization"] == "Basic " + base64.b64encode(
        f"CP-0001:{PASSWORD}".encode()).decode()
    assert csms.connections[0].close_code == 1000  # a clean close, not a drop
    assert link.last_error is None


def test_ws_url_is_refused_by_settings_and_by_the_link(pki: Pki, ntp: NtpServer) -> None:
    with pytest.raises(ConfigError):
        make_settings(pki, 1, ntp, url="ws://127.0.0.1:1/ocpp")
    settings = make_settings(pki, 1, ntp)
    plain = dataclasses.replace(settings, ocpp=dataclasses.replace(settings.ocpp, url="ws://127.0.0.1:1/ocpp"))
    with pytest.raises(ValueError, match="wss"):
        Link(settings=plain, clock=Clock(), session=FakeSession(), password_provider=lambda: None,
             ping_interval_s=lambda: 0.0)


@pytest.mark.asyncio
async def test_proxy_environment_variables_do_not_divert_the_connection(
        pki: Pki, ntp: NtpServer, csms: StubCsms, links: Links, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "wss_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    url = make_settings(pki, csms.port, ntp).ocpp.endpoint_url
    assert get_proxy(parse_uri(url)) is not None  # websockets' default would go through the bogus proxy
    link, _ = links.start(make_settings(pki, csms.port, ntp))
    await until(lambda: link.state == CONNECTED, "connected directly")


@pytest.mark.asyncio
async def test_http_401_is_logged_and_retried_with_backoff_without_crashing(
        pki: Pki, ntp: NtpServer, csms: StubCsms, links: Links, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chargepoint.transport")
    password = ["wrong-password-123"]
    events: list[tuple[str, str]] = []
    link, session = links.start(make_settings(pki, csms.port, ntp), password=lambda: password[0],
                                on_security_event=lambda kind, info: events.append((kind, info)))
    await until(lambda: len(csms.requests) >= 3, "several attempts")
    assert link.state != CONNECTED and session.attaches == 0
    assert "authorization rejected" in (link.last_error or "")
    assert any("authorization rejected" in r.getMessage() for r in caplog.records)
    assert all("wrong-password" not in r.getMessage() for r in caplog.records)  # never log a secret
    assert (EVENT_FAILED_AUTH, "HTTP 401") in events
    assert link.attempts >= 3
    password[0] = "password"  # the next attempt carries the fixed password
    await until(lambda: link.state == CONNECTED, "connected after the fix")


@pytest.mark.asyncio
async def test_active_link_change_triggers_prompt_reconnect(
        pki: Pki, ntp: NtpServer, csms: StubCsms, links: Links) -> None:
    active: list[str | None] = ["wifi"]
    link, session = links.start(make_settings(pki, csms.port, ntp), active_link=lambda: active[0],
                                backoff=Backoff(initial_s=30.0, max_s=60.0))  # no back-off on a link change
    await until(lambda: link.state == CONNECTED and link.link == "wifi", "connected over wifi")
    active[0] = "gsm"  # WiFi dropped, GSM took over: the old socket is half-open
    await until(lambda: csms.handshakes == 2 and link.state == CONNECTED, "reconnected over gsm")
    assert link.link == "gsm" and session.detaches == 1
    queries = ntp.queries
    active[0] = None  # every link down: wait, and do not even query NTP
    await until(lambda: link.state == "offline" and not session.connected, "offline without a link")
    assert link.link is None
    active[0] = "wifi"
    await until(lambda: csms.handshakes == 3 and link.state == CONNECTED, "back on wifi")
    assert ntp.queries > queries


@pytest.mark.asyncio
async def test_reported_link_change_triggers_prompt_reconnect_without_polling(
        pki: Pki, ntp: NtpServer, csms: StubCsms, links: Links) -> None:
    """link_poll_s=None: the backend reports link changes (link_changed()); nothing polls, and
    each reported change is acted on as the polled one is."""
    active: list[str | None] = ["wifi"]
    link, session = links.start(make_settings(pki, csms.port, ntp), active_link=lambda: active[0],
                                link_poll_s=None, backoff=Backoff(initial_s=30.0, max_s=60.0))
    await until(lambda: link.state == CONNECTED and link.link == "wifi", "connected over wifi")
    link.link_changed()   # a report that changes nothing (another link went up) is harmless
    active[0] = "gsm"
    link.link_changed()
    await until(lambda: csms.handshakes == 2 and link.state == CONNECTED, "reconnected over gsm")
    assert link.link == "gsm" and session.detaches == 1
    active[0] = None
    link.link_changed()
    await until(lambda: link.state == "offline" and not session.connected, "offline without a link")
    active[0] = "wifi"
    link.link_changed()
    await until(lambda: csms.handshakes == 3 and link.state == CONNECTED, "back on wifi")


@pytest.mark.asyncio
async def test_server_that_does_not_select_ocpp16_is_refused_ocppj_3_2(
        pki: Pki, ntp: NtpServer, links: Links) -> None:
    csms = await StubCsms(pki, require_subprotocol=False).start()
    try:
        link, session = links.start(make_settings(pki, csms.port, ntp))
        await until(lambda: csms.handshakes >= 2, "retried")
        assert session.attaches == 0
        assert "subprotocol" in (link.last_error or "")
    finally:
        await csms.stop()


@pytest.mark.asyncio
async def test_untrusted_server_certificate_refused_with_security_event_a00_fr_309(
        pki: Pki, other_ca_pki: Pki, ntp: NtpServer, links: Links) -> None:
    csms = await StubCsms(other_ca_pki).start()
    try:
        events: list[tuple[str, str]] = []
        link, session = links.start(make_settings(pki, csms.port, ntp),
                                    on_security_event=lambda kind, info: events.append((kind, info)))
        await until(lambda: link.attempts >= 2 and bool(events), "refused and retried")
        assert csms.requests == [] and session.attaches == 0
        assert events[0][0] == EVENT_INVALID_CS_CERT
        assert "certificate" in (link.last_error or "")
    finally:
        await csms.stop()


@pytest.mark.asyncio
async def test_implausible_clock_waits_for_ntp_before_any_handshake(
        pki: Pki, csms: StubCsms, links: Links) -> None:
    with NtpServer(silent=True) as silent:
        clock = Clock(wall=lambda: 1000.0)  # an RTC-less board at 1970: certificates cannot be checked
        link, _ = links.start(make_settings(pki, csms.port, silent), clock=clock)
        await until(lambda: silent.queries >= 3, "NTP retried")
        assert csms.requests == [] and not clock.synced
        assert "clock" in (link.last_error or "")
        silent.silent = False
        await until(lambda: link.state == CONNECTED, "connected once NTP answered")
        assert clock.synced


@pytest.mark.asyncio
async def test_stop_closes_the_connection_and_detaches_the_session(
        pki: Pki, ntp: NtpServer, csms: StubCsms, links: Links) -> None:
    link, session = links.start(make_settings(pki, csms.port, ntp))
    await until(lambda: link.state == CONNECTED, "connected")
    await link.stop()
    await until(lambda: links.started[0][2].done(), "run() returned")
    assert link.state == "offline" and session.detaches == 1 and not session.connected
    await until(lambda: csms.connections[0].close_code == 1000, "closed cleanly")


@pytest.mark.asyncio
async def test_real_ocppj_session_round_trips_over_the_link(
        pki: Pki, ntp: NtpServer, csms: StubCsms, links: Links) -> None:
    async def get_configuration(payload: dict[str, Any]) -> dict[str, Any]:
        return {"configurationKey": [], "unknownKey": payload.get("key", [])}

    session = Session({"GetConfiguration": get_configuration}, call_timeout_s=WAIT_S)
    link = links.start_with(session, make_settings(pki, csms.port, ntp))
    await until(lambda: link.state == CONNECTED and session.connected, "connected")
    result = await session.call("Heartbeat", {})
    assert result == {"currentTime": "2026-11-24T10:00:00.000Z"}
    await csms.connections[0].send('[2,"cs-1","GetConfiguration",{"key":["Nope"]}]')
    await until(lambda: any('"cs-1"' in m for m in csms.received), "CALLRESULT from the charger")
    answer = json.loads(next(m for m in csms.received if '"cs-1"' in m))
    assert answer == [3, "cs-1", {"configurationKey": [], "unknownKey": ["Nope"]}]
    await link.stop()
    assert not session.connected
