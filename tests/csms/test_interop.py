"""Interoperability: a known-good third-party charge point (the `ocpp` library's) raises no violations."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call
from ocpp.v16.enums import Action, ConfigurationStatus
from websockets.typing import Subprotocol

from chargepoint.csms import CentralSystem

from .conftest import CP_ID, PASSWORD, basic_auth, client_ssl

NOW = "2025-06-01T12:00:00Z"


class LibraryChargePoint(ChargePoint):
    @on(Action.change_configuration)
    async def on_change_configuration(self, key: str, value: str, **_: Any) -> Any:
        from ocpp.v16.call_result import ChangeConfiguration

        return ChangeConfiguration(status=ConfigurationStatus.accepted)


@pytest.mark.asyncio
async def test_ocpp_library_charge_point_runs_a_session_without_violations(cs: CentralSystem) -> None:
    from websockets.asyncio.client import connect

    async with connect(f"{cs.url}/{CP_ID}", ssl=client_ssl(cs), subprotocols=[Subprotocol("ocpp1.6")],
                       additional_headers={"Authorization": basic_auth(CP_ID, PASSWORD)}, proxy=None) as ws:
        cp = LibraryChargePoint(CP_ID, ws)
        loop_task = asyncio.ensure_future(cp.start())
        try:
            boot = await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
            assert boot.status == "Accepted"
            await cp.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Preparing",
                                                  timestamp=NOW))
            start = await cp.call(call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=0, timestamp=NOW))
            sample = {"value": "21.5", "unit": "Celsius", "measurand": "Temperature"}
            await cp.call(call.MeterValues(connector_id=1, transaction_id=start.transaction_id,
                                           meter_value=[{"timestamp": NOW, "sampledValue": [sample]}]))
            answer = await cs.call(CP_ID, "ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "10"})
            assert answer == {"status": "Accepted"}
            await cp.call(call.StopTransaction(meter_stop=1500, timestamp=NOW, transaction_id=start.transaction_id))
        finally:
            loop_task.cancel()
    tx = cs.transactions[start.transaction_id]
    assert tx.stop is not None and tx.stop["meterStop"] == 1500 and len(tx.meter_values) == 1
    cs.assert_no_violations()
