"""Feature services. `build_services(app)` instantiates them in dependency order."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chargepoint.app import ChargePointApp


def build_services(app: ChargePointApp) -> list[object]:
    from chargepoint.services.core import ConfigurationService, StatusNotificationService, TriggerMessageService
    from chargepoint.services.meters import MeterService

    status = StatusNotificationService(app)
    app.meters = MeterService(app)
    services: list[object] = [ConfigurationService(app), status, TriggerMessageService(app, status), app.meters]
    from chargepoint.services.smart_charging import SmartChargingService  # smart charging (issue 5)
    app.smart_charging = SmartChargingService(app)
    services.append(app.smart_charging)
    from chargepoint.services.metering import MeteringService  # metering (issue 3): before transactions,
    app.metering = MeteringService(app)  # so a power-loss stop at their construction gets its transactionData
    services.append(app.metering)
    from chargepoint.services.authorization import AuthorizationService  # authorization (issue 4)
    from chargepoint.services.transactions import TransactionService  # transactions (issue 3)
    app.auth = AuthorizationService(app)
    app.transactions = TransactionService(app)
    services += [app.auth, app.transactions]
    from chargepoint.services.operations import build_operation_services  # Reset, ChangeAvailability, Unlock,
    services += build_operation_services(app)  # DataTransfer, reservations, local list: after transactions
    from chargepoint.services.firmware import FirmwareService  # firmware management, diagnostics (p2e)
    from chargepoint.services.security import SecurityService  # security whitepaper (p2e)
    firmware, security = FirmwareService(app), SecurityService(app)
    vars(app).update(firmware=firmware, security=security)  # app.firmware / app.security (not declared yet)
    services += [firmware, security]
    return services
