"""Registration (BootNotification), Heartbeat and the registration gate.

OCPP 1.6 §4.2 and errata 3.11: until BootNotification is answered Accepted or
Pending the charger sends no other request (not even queued ones). While
Pending it answers the central system but sends nothing unsolicited except
what a TriggerMessage asked for. While Rejected it neither sends nor answers
until the retry interval has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chargepoint.ocppj.session import CallErrorReceived, CallTimeout, NotConnected

if TYPE_CHECKING:
    from chargepoint.app import ChargePointApp

log = logging.getLogger("chargepoint.registration")

# When the central system answers interval 0 with a non-Accepted status, the
# charger chooses its own wait "in a way that avoids flooding" (§4.2).
DEFAULT_RETRY_INTERVAL_S = 60.0
# Retry after a lost or failed BootNotification (no answer at all).
UNANSWERED_RETRY_S = 10.0

# Central-system initiated actions refused while Pending (§4.2).
NOT_ALLOWED_WHILE_PENDING = frozenset({"RemoteStartTransaction", "RemoteStopTransaction"})


def parse_ocpp_datetime(text: str) -> dt.datetime | None:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


class RegistrationService:
    def __init__(self, app: ChargePointApp) -> None:
        self.app = app
        self.status: str | None = None          # last BootNotification.conf status this process
        self.accepted = asyncio.Event()         # Accepted at least once since this process started
        self._rejected_until_s: float | None = None
        self._retry_wait_s = DEFAULT_RETRY_INTERVAL_S  # wait before the next BootNotification after non-Accepted
        self._boot_requested = asyncio.Event()  # TriggerMessage(BootNotification)
        self._last_outbound_s = app.clock.monotonic_s()
        self._on_accepted: list[Callable[[], None]] = []
        # The heartbeat wait sleeps until the next one is due (§4.6) and is woken only by what
        # can bring that earlier or end it: a new HeartbeatInterval, a link state change, a
        # TriggerMessage(BootNotification). Other outbound messages only postpone it.
        self._heartbeat_wake = asyncio.Event()
        app.config.add_listener(self._on_config_change)
        app.add_link_listener(self._on_link_state)

    # ----------------------------------------------------------------- gates

    @property
    def online(self) -> bool:
        """Connected and Accepted: any request may be sent."""
        return self.app.session.connected and self.accepted.is_set()

    def may_answer(self, action: str) -> bool | str:
        """True to handle, False to stay silent (Rejected), "Rejected" to refuse (Pending rules)."""
        if self.status == "Rejected" and not self.accepted.is_set():
            return False
        if self.status == "Pending" and action in NOT_ALLOWED_WHILE_PENDING:
            return "Rejected"
        return True

    def on_accepted(self, callback: Callable[[], None]) -> None:
        self._on_accepted.append(callback)

    def note_outbound(self) -> None:
        self._last_outbound_s = self.app.clock.monotonic_s()

    def request_boot_notification(self) -> None:
        self._boot_requested.set()
        self._heartbeat_wake.set()

    def _on_config_change(self, key: str, _value: str) -> None:
        if key == "HeartbeatInterval":
            self._heartbeat_wake.set()

    def _on_link_state(self, _state: str) -> None:
        self._heartbeat_wake.set()

    # ----------------------------------------------------------------- messages

    def boot_payload(self) -> dict[str, Any]:
        ocpp = self.app.settings.ocpp
        payload: dict[str, Any] = {
            "chargePointVendor": ocpp.vendor[:20],
            "chargePointModel": ocpp.model[:20],
            "firmwareVersion": self.app.firmware_version()[:50],
        }
        if ocpp.serial_number:
            payload["chargePointSerialNumber"] = ocpp.serial_number[:25]
            payload["chargeBoxSerialNumber"] = ocpp.serial_number[:25]
        meter_type = self.app.meter_type()
        if meter_type:
            payload["meterType"] = meter_type[:25]
        return payload

    async def send_boot_notification(self) -> str | None:
        try:
            conf = await self.app.session.call("BootNotification", self.boot_payload())
        except (CallErrorReceived, CallTimeout, NotConnected) as exc:
            log.warning("BootNotification not answered: %s", type(exc).__name__)
            return None
        self.note_outbound()
        status = conf["status"]
        interval_s = int(conf.get("interval", 0))
        self.status = status
        current_time = parse_ocpp_datetime(conf.get("currentTime", ""))
        if current_time is not None:
            self.app.clock.apply_central_time(current_time)
        log.info("BootNotification %s (interval %d s)", status, interval_s)
        if status == "Accepted":
            if interval_s > 0:
                # §4.2: adjust the heartbeat interval to the one in the response.
                self.app.config.set_internal("HeartbeatInterval", interval_s)
            self._rejected_until_s = None
            first = not self.accepted.is_set()
            self.accepted.set()
            if first:
                self.app.persist_registration()
            for callback in list(self._on_accepted):
                try:
                    callback()
                except Exception:
                    log.exception("on_accepted callback failed")
        else:
            wait_s = float(interval_s) if interval_s > 0 else DEFAULT_RETRY_INTERVAL_S
            if status == "Rejected":
                self._rejected_until_s = self.app.clock.monotonic_s() + wait_s
            self._retry_wait_s = wait_s
        return str(status)

    async def run(self) -> None:
        """Register, then keep the heartbeat going. Runs for the daemon's life."""
        while True:
            await self.app.wait_connected()
            if not self.accepted.is_set() or self._boot_requested.is_set():
                self._boot_requested.clear()
                status = await self.send_boot_notification()
                if status is None:
                    await self._sleep_or_boot_request(UNANSWERED_RETRY_S)
                    continue
                if status != "Accepted":
                    await self._sleep_or_boot_request(self._retry_wait_s)
                    continue
            await self._heartbeat_until_disconnect()

    async def _sleep_or_boot_request(self, wait_s: float) -> None:
        # A TriggerMessage(BootNotification) may cut the wait short while Pending.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._boot_requested.wait(), timeout=wait_s)

    async def _heartbeat_until_disconnect(self) -> None:
        while self.app.session.connected and not self._boot_requested.is_set():
            self._heartbeat_wake.clear()
            interval_s = self.app.config.get_int("HeartbeatInterval")
            if interval_s <= 0:
                await self._wait_heartbeat_wake(None)   # no heartbeat until the key changes
                continue
            due_s = self._last_outbound_s + interval_s
            now_s = self.app.clock.monotonic_s()
            if now_s < due_s:
                # Woken early, the loop only finds the new due time (note_outbound moved it later).
                await self._wait_heartbeat_wake(due_s - now_s)
                continue
            await self.send_heartbeat()

    async def _wait_heartbeat_wake(self, timeout_s: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._heartbeat_wake.wait()

    async def send_heartbeat(self) -> bool:
        try:
            conf = await self.app.session.call("Heartbeat", {})
        except (CallErrorReceived, CallTimeout, NotConnected) as exc:
            log.info("Heartbeat not answered: %s", type(exc).__name__)
            self.note_outbound()  # do not hammer a central system that errors
            return False
        self.note_outbound()
        current_time = parse_ocpp_datetime(conf.get("currentTime", ""))
        if current_time is not None:
            self.app.clock.apply_central_time(current_time)
        return True
