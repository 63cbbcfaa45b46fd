"""Feature services. `build_services(app)` instantiates them in dependency order.

Order matters where one service acts in its constructor: power-loss recovery in
TransactionService queues StopTransactions at construction, so metering (their
transactionData) is built before it; operations (availability, reservations)
consult transactions; smart charging subscribes to transaction events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chargepoint.app import ChargePointApp


def build_services(app: ChargePointApp) -> list[object]:
    from chargepoint.services.authorization import AuthorizationService
    from chargepoint.services.core import ConfigurationService, StatusNotificationService, TriggerMessageService
    from chargepoint.services.firmware import FirmwareService
    from chargepoint.services.metering import MeteringService
    from chargepoint.services.meters import MeterService
    from chargepoint.services.operations import build_operation_services
    from chargepoint.services.security import SecurityService
    from chargepoint.services.smart_charging import SmartChargingService
    from chargepoint.services.transactions import TransactionService

    status = StatusNotificationService(app)
    app.meters = MeterService(app)
    services: list[object] = [ConfigurationService(app), status, TriggerMessageService(app, status), app.meters]
    app.smart_charging = SmartChargingService(app)
    app.metering = MeteringService(app)
    app.auth = AuthorizationService(app)
    app.transactions = TransactionService(app)
    services += [app.smart_charging, app.metering, app.auth, app.transactions]
    # Reset, ChangeAvailability, UnlockConnector, DataTransfer, reservations, local list.
    services += build_operation_services(app)
    app.firmware = FirmwareService(app)
    app.security = SecurityService(app)
    services += [app.firmware, app.security]
    return services
