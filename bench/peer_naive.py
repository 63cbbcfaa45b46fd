"""The naive stack (field-notes.md §2): a charge point written the obvious way with the
`ocpp` library, answering GetConfiguration and SetChargingProfile."""

from __future__ import annotations

import asyncio
import base64
import ssl
import sys
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint, call
from ocpp.v16.enums import Action, ChargingProfileStatus
from websockets.asyncio.client import connect


class NaiveChargePoint(ChargePoint):
    @on(Action.get_configuration)
    async def on_get_configuration(self, **kwargs: Any) -> Any:
        from ocpp.v16 import call_result

        return call_result.GetConfiguration(
            configuration_key=[{"key": "HeartbeatInterval", "readonly": False, "value": "3600"}])

    @on(Action.set_charging_profile)
    async def on_set_charging_profile(self, **kwargs: Any) -> Any:
        from ocpp.v16 import call_result

        return call_result.SetChargingProfile(status=ChargingProfileStatus.accepted)


async def main(url: str, ca_file: str, cp_id: str, password: str) -> None:
    ctx = ssl.create_default_context(cafile=ca_file)
    auth = base64.b64encode(f"{cp_id}:{password}".encode()).decode()
    async with connect(f"{url}/{cp_id}", ssl=ctx, subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                       additional_headers={"Authorization": f"Basic {auth}"}, proxy=None,
                       ping_interval=None) as ws:
        cp = NaiveChargePoint(cp_id, ws)
        boot = asyncio.create_task(cp.call(call.BootNotification(charge_point_vendor="naive",
                                                                 charge_point_model="naive")))
        await cp.start()
        await boot


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
