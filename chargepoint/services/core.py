"""Core-profile plumbing that belongs to no single feature: configuration keys,
status notifications and TriggerMessage.

OCPP 1.6 §5.3 ChangeConfiguration, §5.8 GetConfiguration, §4.9 StatusNotification
(+ errata 3.22: after BootNotification Accepted, report connector 0 and every
connector), §5.17 TriggerMessage (the CALLRESULT goes out before the triggered
message).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from chargepoint.evse.controller import ConnectorEvent, StatusDue
from chargepoint.evse.status import DueReport
from chargepoint.ocppj.session import OcppError, Reply

if TYPE_CHECKING:
    from chargepoint.app import ChargePointApp

log = logging.getLogger("chargepoint.core")

# Keys whose change means a new TLS/websocket handshake (Security WP A01, A05).
RECONNECT_KEYS = frozenset({"AuthorizationKey", "SecurityProfile"})

TriggerHandler = Callable[[int | None], Awaitable[None]]


class ConfigurationService:
    def __init__(self, app: ChargePointApp) -> None:
        self.app = app
        app.on("GetConfiguration", self.on_get_configuration)
        app.on("ChangeConfiguration", self.on_change_configuration)
        app.config.add_guard("SecurityProfile", self._guard_security_profile)

    def _guard_security_profile(self, old: str, new: str) -> str | None:
        # Security WP A05.FR.01-04: only upwards, and only when the prerequisites are there.
        if int(new) <= int(old):
            return "Rejected"
        if int(new) == 3 and self.app.client_certificate() is None:
            return "Rejected"  # A05.FR.04: no valid ChargePointCertificate installed
        if int(new) == 2 and not self.app.password():
            return "Rejected"
        if int(new) < 2:
            return "Rejected"  # this charger never runs without TLS
        return None

    async def on_get_configuration(self, payload: dict[str, Any]) -> dict[str, Any]:
        keys = payload.get("key") or None
        max_keys = self.app.config.get_int("GetConfigurationMaxKeys")
        if keys is not None and len(keys) > max_keys:
            # §5.8: the number of keys per request MAY be limited to GetConfigurationMaxKeys.
            raise OcppError("OccurenceConstraintViolation", f"at most {max_keys} keys per request")
        return self.app.config.get_configuration(keys)

    async def on_change_configuration(self, payload: dict[str, Any]) -> dict[str, Any] | Reply:
        key = payload["key"]
        status = self.app.config.change_configuration(key, payload["value"])
        if status == "Accepted" and key in RECONNECT_KEYS:
            # Answer Accepted first, then reconnect with the new credentials (Security WP A01.FR.05).
            if self.app.security_events is not None:
                self.app.security_events("ReconfigurationOfSecurityParameters", f"{key} changed")
            return Reply({"status": status}, after_sent=self.app.link.request_reconnect)
        return {"status": status}


class StatusNotificationService:
    """Sends StatusNotification when a connector's debounced status changes, and the
    full picture after registration and after every reconnect (issue: StatusNotification
    is not queued offline; it is re-sent with the current state)."""

    def __init__(self, app: ChargePointApp) -> None:
        self.app = app
        app.add_connector_listener(self._on_connector_event)
        app.registration.on_accepted(self._send_all_soon)
        app.add_link_listener(self._on_link_state)
        self._charge_point_status: tuple[str, str] = ("Available", "NoError")

    def _on_link_state(self, state: str) -> None:
        if state == "connected" and self.app.registration.accepted.is_set():
            # Registration is not repeated on reconnect; report the current picture instead.
            self._send_all_soon()

    def _send_all_soon(self) -> None:
        self.app.spawn(self.send_all(), "status-all")

    def _on_connector_event(self, event: ConnectorEvent) -> None:
        if isinstance(event, StatusDue) and self.app.online:
            self.app.spawn(self.send_due(event.connector_id, event.due), f"status-{event.connector_id}")

    def charge_point_status(self) -> tuple[str, str]:
        """Connector 0 (§4.9: Available, Unavailable or Faulted only)."""
        availability = self.app.store.kv_get("availability", "0", "Operative")
        return ("Unavailable" if availability == "Inoperative" else "Available", "NoError")

    async def send_due(self, connector_id: int, due: DueReport, *, triggered: bool = False) -> None:
        report = due.report
        payload: dict[str, Any] = {
            "connectorId": connector_id,
            "status": str(report.status),
            "errorCode": str(report.error_code),
        }
        if report.info:
            payload["info"] = report.info[:50]
        if report.vendor_error_code:
            payload["vendorErrorCode"] = report.vendor_error_code[:50]
        if self.app.clock.synced:
            # The time the status began (§6.48 timestamp), not the time it is sent: with
            # MinimumStatusDuration the two differ.
            began_s = self.app.clock.wall_s() - (self.app.clock.monotonic_s() - due.since_s)
            payload["timestamp"] = self.app.clock.iso8601(dt.datetime.fromtimestamp(began_s, dt.UTC))
        # A triggered message may go out while Pending (§4.2); others wait for Accepted.
        await self.app.try_call("StatusNotification", payload, allow_unregistered=triggered)

    async def send_connector(self, connector_id: int, *, triggered: bool = False) -> None:
        if connector_id == 0:
            status, error_code = self.charge_point_status()
            payload: dict[str, Any] = {"connectorId": 0, "status": status, "errorCode": error_code}
            if self.app.clock.synced:
                payload["timestamp"] = self.app.clock.iso8601(self.app.clock.now())
            await self.app.try_call("StatusNotification", payload, allow_unregistered=triggered)
            return
        controller = self.app.controllers.get(connector_id)
        if controller is None:
            return
        due = controller.reporter.report_now()
        if due is not None:
            await self.send_due(connector_id, due, triggered=triggered)

    async def send_all(self, *, triggered: bool = False) -> None:
        for connector_id in [0, *self.app.controllers]:
            await self.send_connector(connector_id, triggered=triggered)


class TriggerMessageService:
    """TriggerMessage (§5.17). Services register what they can trigger."""

    def __init__(self, app: ChargePointApp, status: StatusNotificationService) -> None:
        self.app = app
        self._status = status
        self.handlers: dict[str, TriggerHandler] = {
            "BootNotification": self._trigger_boot,
            "Heartbeat": self._trigger_heartbeat,
            "StatusNotification": self._trigger_status,
        }
        app.on("TriggerMessage", self.on_trigger_message)
        app.trigger = self

    def register(self, message: str, handler: TriggerHandler) -> None:
        self.handlers[message] = handler

    async def on_trigger_message(self, payload: dict[str, Any]) -> dict[str, Any] | Reply:
        message = payload["requestedMessage"]
        connector_id = payload.get("connectorId")
        if connector_id is not None and connector_id != 0 and connector_id not in self.app.controllers:
            # §5.17: a connectorId that does not exist is Rejected.
            return {"status": "Rejected"}
        handler = self.handlers.get(message)
        if handler is None:
            return {"status": "NotImplemented"}

        async def after_sent() -> None:
            await handler(connector_id)

        return Reply({"status": "Accepted"}, after_sent=after_sent)

    async def _trigger_boot(self, _connector_id: int | None) -> None:
        # The customer's platform triggers BootNotification also after registration
        # (requirements.md), so we answer it even though errata 3.35 recommends Rejected.
        # The registration loop sends it (also while Pending, cutting its wait short).
        self.app.registration.request_boot_notification()

    async def _trigger_heartbeat(self, _connector_id: int | None) -> None:
        if self.app.session.connected:
            await self.app.registration.send_heartbeat()

    async def _trigger_status(self, connector_id: int | None) -> None:
        if connector_id is None:
            await self._status.send_all(triggered=True)
        else:
            await self._status.send_connector(connector_id, triggered=True)
