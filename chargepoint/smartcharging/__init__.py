"""Smart charging (OCPP 1.6 §3.13): profiles, the composite schedule, the installed-profile manager."""

from chargepoint.smartcharging.composite import (
    CompositePeriod,
    CompositeSchedule,
    Limit,
    composite_schedule,
    limit_at,
    next_limit_change,
)
from chargepoint.smartcharging.manager import (
    InMemoryProfileRepository,
    ProfileRepository,
    SmartChargingManager,
    UnknownConnector,
)
from chargepoint.smartcharging.model import (
    ChargingProfile,
    ChargingSchedule,
    ChargingSchedulePeriod,
    ProfileRejected,
    TxInfo,
    from_json,
    parse_profile,
    to_json,
)

__all__ = [
    "ChargingProfile",
    "ChargingSchedule",
    "ChargingSchedulePeriod",
    "CompositePeriod",
    "CompositeSchedule",
    "InMemoryProfileRepository",
    "Limit",
    "ProfileRejected",
    "ProfileRepository",
    "SmartChargingManager",
    "TxInfo",
    "UnknownConnector",
    "composite_schedule",
    "from_json",
    "limit_at",
    "next_limit_change",
    "parse_profile",
    "to_json",
]
