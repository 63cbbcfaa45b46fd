"""The floor: a bare websockets client that answers every CALL with a canned CALLRESULT."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import sys

from websockets.asyncio.client import connect


async def main(url: str, ca_file: str, cp_id: str, password: str) -> None:
    ctx = ssl.create_default_context(cafile=ca_file)
    auth = base64.b64encode(f"{cp_id}:{password}".encode()).decode()
    async with connect(f"{url}/{cp_id}", ssl=ctx, subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                       additional_headers={"Authorization": f"Basic {auth}"}, proxy=None,
                       ping_interval=None, compression=None) as ws:
        await ws.send(json.dumps([2, "boot-1", "BootNotification",
                                  {"chargePointVendor": "raw", "chargePointModel": "raw"}]))
        async for text in ws:
            msg = json.loads(text)
            if msg[0] == 2:
                await ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
