"""Feature services. `build_services(app)` instantiates them in dependency order."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chargepoint.app import ChargePointApp


def build_services(app: ChargePointApp) -> list[object]:
    from chargepoint.services.core import ConfigurationService, StatusNotificationService, TriggerMessageService

    status = StatusNotificationService(app)
    services: list[object] = [ConfigurationService(app), status, TriggerMessageService(app, status)]
    return services
