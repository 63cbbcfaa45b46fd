"""Fixtures for the central system tests: a started CentralSystem and a raw websocket client."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from chargepoint.csms import CentralSystem

CP_ID = "CP-1"
PASSWORD = "0123456789abcdef0123"
BOOT = {"chargePointVendor": "VendorX", "chargePointModel": "Model1"}


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def client_ssl(cs: CentralSystem) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cs.ca_file))


class RawClient:
    """A minimal charge point on raw frames: sends what the test says, nothing else."""

    _ids = itertools.count(1)   # shared: message ids stay unique across reconnects (OCPP-J errata 3.7)

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    def next_id(self) -> str:
        return f"m{next(self._ids)}"

    async def send(self, frame: Any) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout_s: float = 10.0) -> Any:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout_s))

    async def call(self, action: str, payload: dict[str, Any], message_id: str | None = None) -> Any:
        """Send a CALL and return the central system's answer frame."""
        mid = message_id or self.next_id()
        await self.send([2, mid, action, payload])
        answer = await self.recv()
        assert answer[1] == mid, answer
        return answer

    async def boot(self) -> Any:
        answer = await self.call("BootNotification", BOOT)
        assert answer[0] == 3 and answer[2]["status"] == "Accepted", answer
        return answer


async def open_client(cs: CentralSystem, cp_id: str = CP_ID, password: str | None = PASSWORD, *,
                      subprotocols: list[str] | None = None, headers: dict[str, str] | None = None,
                      **connect_kwargs: Any) -> ClientConnection:
    extra = dict(headers or {})
    if password is not None:
        extra["Authorization"] = basic_auth(cp_id, password)
    offered = [Subprotocol(p) for p in (["ocpp1.6"] if subprotocols is None else subprotocols)]
    return await connect(f"{cs.url}/{cp_id}", ssl=client_ssl(cs), additional_headers=extra,
                         subprotocols=offered or None,   # []: no Sec-WebSocket-Protocol header at all
                         proxy=None, open_timeout=10, **{"close_timeout": 2, **connect_kwargs})


@pytest_asyncio.fixture
async def cs() -> AsyncIterator[CentralSystem]:
    server = CentralSystem(passwords={CP_ID: PASSWORD})
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def client(cs: CentralSystem) -> AsyncIterator[RawClient]:
    ws = await open_client(cs)
    try:
        await cs.wait_connected(CP_ID)
        yield RawClient(ws)
    finally:
        await ws.close()
