"""Authorization of idTags: local list, cache, Authorize.req, offline rules, ClearCache.

OCPP 1.6 §3.5 (local authorization and offline behaviour), §3.5.1 (cache),
§3.5.2/§3.5.3 (local list, its priority over the cache), §3.5.4 (unknown
offline authorization), §3.10 (parent idTag groups), §4.1 (Authorize), §5.4 and
errata 3.23 (ClearCache), §9.1 keys LocalPreAuthorize, LocalAuthorizeOffline,
AllowOfflineTxForUnknownId, AuthorizationCacheEnabled, LocalAuthListEnabled.

The decision is a pure function (`local_entry` + `decide`), the service only
does the I/O around it:

1. Look the idTag up locally: the local list first when LocalAuthListEnabled
   (§3.5.3: it has priority), else the cache when AuthorizationCacheEnabled.
   An entry whose expiryDate has passed counts as Expired (§3.5.1; an expired
   cache entry is rewritten as Expired). No expiry check without a synchronised
   clock (we cannot tell; the central system re-checks at StartTransaction).
2. Online (connected and Accepted):
   - LocalPreAuthorize and a local list entry, or an Accepted cache entry:
     that answer, without an Authorize.req (§9.1.13).
   - otherwise Authorize.req; its IdTagInfo is the answer. A NOT-valid cache
     entry is always re-checked online (§3.5.1, last bullet).
   - an Authorize.req that fails (timeout, CALLERROR, link lost) falls back to
     the offline rules below.
3. Offline:
   - a local entry that is not Accepted (Invalid, Blocked, Expired, ...) is
     refused (§3.5.4 "MUST be rejected");
   - an Accepted local entry is accepted when LocalAuthorizeOffline (§9.1.12);
   - anything else (unknown, or local use switched off) is accepted only when
     AllowOfflineTxForUnknownId (§3.5.4), and only if the charger was Accepted
     by a central system at least once (§4.2.1: deny charging to a charger that
     was never accepted);
   - otherwise Invalid.

Every IdTagInfo received from the central system (Authorize.conf, and via
`note_id_tag_info` StartTransaction.conf and StopTransaction.conf) updates the
cache when AuthorizationCacheEnabled, except for idTags in the local list
(§3.5.3: they SHALL NOT be added to the cache). A StartTransaction.conf whose
status disagrees with the local list is reported as a StatusNotification with
connectorId 0 and errorCode LocalListConflict (§3.5.2).

idTags are case-insensitive (§7.28): comparisons use casefold; the stores are
keyed by the string as received.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from chargepoint.ocppj.session import CallErrorReceived, CallTimeout, NotConnected

if TYPE_CHECKING:
    from chargepoint.app import ChargePointApp

log = logging.getLogger("chargepoint.auth")

ACCEPTED = "Accepted"
INVALID = "Invalid"
EXPIRED = "Expired"

Source = Literal["local_list", "cache", "central", "offline_unknown", "offline_refused"]
Action = Literal["use_local", "ask_central", "accept_unknown", "refuse"]

# Remember this many recent IdTagInfos in memory: parentIdTag for group stops also
# when the cache is disabled (§3.10).
RECENT_INFO_MAX = 64


# --------------------------------------------------------------------------- pure decision


@dataclass(frozen=True)
class AuthSettings:
    """The configuration keys that steer the decision (§9.1, §9.2)."""

    local_list_enabled: bool = True
    cache_enabled: bool = True
    local_pre_authorize: bool = False
    local_authorize_offline: bool = True
    allow_offline_tx_for_unknown_id: bool = False
    ever_accepted: bool = True          # accepted by a central system at least once (§4.2.1)


@dataclass(frozen=True)
class LocalEntry:
    info: dict[str, Any]                 # IdTagInfo, expiry applied
    source: Literal["local_list", "cache"]
    expired_now: bool = False            # the stored entry said Accepted but its expiryDate has passed

    @property
    def accepted(self) -> bool:
        return self.info.get("status") == ACCEPTED


@dataclass(frozen=True)
class Decision:
    action: Action
    info: dict[str, Any] | None = None   # the answer when action is use_local / accept_unknown / refuse


@dataclass(frozen=True)
class AuthResult:
    """What authorize() found: the IdTagInfo and where it came from."""

    id_tag: str
    info: dict[str, Any]
    source: Source

    @property
    def accepted(self) -> bool:
        return self.info.get("status") == ACCEPTED

    @property
    def parent_id_tag(self) -> str | None:
        parent = self.info.get("parentIdTag")
        return parent if isinstance(parent, str) and parent else None


def parse_datetime(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def effective_info(info: Mapping[str, Any], now: datetime | None) -> tuple[dict[str, Any], bool]:
    """The IdTagInfo with its expiryDate applied: (info, expired_now). §3.5.1, §3.5.4."""
    out = dict(info)
    expiry = parse_datetime(out.get("expiryDate"))
    if now is not None and expiry is not None and expiry <= now and out.get("status") == ACCEPTED:
        out["status"] = EXPIRED
        return out, True
    return out, False


def local_entry(list_info: Mapping[str, Any] | None, cache_info: Mapping[str, Any] | None,
                settings: AuthSettings, now: datetime | None) -> LocalEntry | None:
    """The local answer for an idTag: local list first (§3.5.3), then the cache; None if unknown."""
    if settings.local_list_enabled and list_info is not None:
        info, expired = effective_info(list_info, now)
        return LocalEntry(info, "local_list", expired)
    if settings.cache_enabled and cache_info is not None:
        info, expired = effective_info(cache_info, now)
        return LocalEntry(info, "cache", expired)
    return None


def decide(entry: LocalEntry | None, *, online: bool, settings: AuthSettings) -> Decision:
    """What to do with a presented idTag (the module docstring's table)."""
    if online:
        if settings.local_pre_authorize and entry is not None:
            # §9.1.13: start for locally-authorized ids without asking. The local list is the
            # central system's own word (also when it refuses); a NOT-valid cache entry is
            # re-checked online (§3.5.1).
            if entry.source == "local_list" or entry.accepted:
                return Decision("use_local", entry.info)
        return Decision("ask_central")
    if entry is not None and not entry.accepted:
        return Decision("refuse", entry.info)   # §3.5.4: known but not valid MUST be rejected
    if entry is not None and settings.local_authorize_offline:
        return Decision("use_local", entry.info)
    if settings.allow_offline_tx_for_unknown_id and settings.ever_accepted:
        return Decision("accept_unknown", {"status": ACCEPTED})
    return Decision("refuse", {"status": INVALID})


def same_group(tag_a: str, parent_a: str | None, tag_b: str, parent_b: str | None) -> bool:
    """§3.10: the same idTag (case-insensitive, §7.28) or the same, non-empty parentIdTag."""
    if tag_a.casefold() == tag_b.casefold():
        return True
    return bool(parent_a) and bool(parent_b) and str(parent_a).casefold() == str(parent_b).casefold()


# --------------------------------------------------------------------------- the service


class AuthorizationService:
    """app.auth: authorize idTags, keep the cache, answer ClearCache."""

    def __init__(self, app: ChargePointApp) -> None:
        self.app = app
        self._recent: dict[str, dict[str, Any]] = {}   # casefolded idTag -> last IdTagInfo seen
        app.on("ClearCache", self.on_clear_cache)
        app.auth = self

    # ----------------------------------------------------------------- settings

    def settings(self) -> AuthSettings:
        config = self.app.config
        return AuthSettings(
            local_list_enabled=config.get_bool("LocalAuthListEnabled") if config.has("LocalAuthListEnabled")
            else False,
            cache_enabled=config.get_bool("AuthorizationCacheEnabled"),
            local_pre_authorize=config.get_bool("LocalPreAuthorize"),
            local_authorize_offline=config.get_bool("LocalAuthorizeOffline"),
            allow_offline_tx_for_unknown_id=config.get_bool("AllowOfflineTxForUnknownId"),
            ever_accepted=bool(self.app.store.kv_get("registration", "ever_accepted", False))
            or self.app.registration.accepted.is_set(),
        )

    def _now(self) -> datetime | None:
        return self.app.clock.now() if self.app.clock.synced else None

    # ----------------------------------------------------------------- lookups

    def lookup(self, id_tag: str, settings: AuthSettings | None = None) -> LocalEntry | None:
        """The local answer (list, then cache) without any network; expired cache entries are
        rewritten as Expired (§3.5.1)."""
        settings = settings or self.settings()
        store = self.app.store
        entry = local_entry(store.local_list.get(id_tag), store.auth_cache.get(id_tag), settings, self._now())
        if entry is not None and entry.expired_now and entry.source == "cache":
            store.auth_cache.upsert(id_tag, entry.info)
        return entry

    def parent_of(self, id_tag: str) -> str | None:
        """The parentIdTag known for an idTag (recent answers, local list, cache); no network."""
        candidates = [self._recent.get(id_tag.casefold()), self.app.store.local_list.get(id_tag),
                      self.app.store.auth_cache.get(id_tag)]
        for info in candidates:
            if info is not None:
                parent = info.get("parentIdTag")
                if isinstance(parent, str) and parent:
                    return parent
        return None

    def same_group(self, tag_a: str, tag_b: str, *, parent_a: str | None = None,
                   parent_b: str | None = None) -> bool:
        """May tag_b stop what tag_a started (§3.10, §4.10)? Same tag, or the same parentIdTag."""
        return same_group(tag_a, parent_a or self.parent_of(tag_a), tag_b, parent_b or self.parent_of(tag_b))

    # ----------------------------------------------------------------- authorize

    async def authorize(self, id_tag: str) -> dict[str, Any]:
        """The IdTagInfo for a presented idTag (status Accepted means: may charge)."""
        return (await self.check(id_tag)).info

    async def check(self, id_tag: str) -> AuthResult:
        settings = self.settings()
        entry = self.lookup(id_tag, settings)
        decision = decide(entry, online=self.app.online, settings=settings)
        if decision.action == "ask_central":
            info = await self._ask_central(id_tag)
            if info is not None:
                return self._result(id_tag, info, "central")
            decision = decide(entry, online=False, settings=settings)
        assert decision.info is not None
        if decision.action == "use_local":
            assert entry is not None
            result = self._result(id_tag, decision.info, entry.source)
        elif decision.action == "accept_unknown":
            result = self._result(id_tag, decision.info, "offline_unknown")
        else:
            source: Source = entry.source if entry is not None else "offline_refused"
            result = self._result(id_tag, decision.info, source)
        return result

    def _result(self, id_tag: str, info: dict[str, Any], source: Source) -> AuthResult:
        result = AuthResult(id_tag, info, source)
        # %r: the idTag comes from the central system or a card; a CR/LF in it must not
        # split the log line (one line per event, docs/ARCHITECTURE.md).
        log.info("idTag %r: %s (%s)", id_tag, info.get("status"), source)
        return result

    async def _ask_central(self, id_tag: str) -> dict[str, Any] | None:
        try:
            conf = await self.app.call("Authorize", {"idTag": id_tag})
        except (CallErrorReceived, CallTimeout, NotConnected) as exc:
            log.info("Authorize for %r not answered (%s): offline rules apply", id_tag, type(exc).__name__)
            return None
        info = conf.get("idTagInfo")
        if not isinstance(info, dict):
            return None
        self.note_id_tag_info(id_tag, info, origin="Authorize")
        return dict(info)

    # ----------------------------------------------------------------- cache upkeep

    def note_id_tag_info(self, id_tag: str, info: Mapping[str, Any], *, origin: str) -> None:
        """An IdTagInfo from the central system (Authorize/StartTransaction/StopTransaction.conf):
        update the cache (§3.5.1, §4.1, §4.8, §4.10) unless the idTag is in the local list (§3.5.3)."""
        if not isinstance(info, Mapping) or "status" not in info:
            return
        self._remember(id_tag, info)
        store = self.app.store
        listed = store.local_list.get(id_tag)
        if listed is not None:
            if origin == "StartTransaction" and listed.get("status") != info.get("status") \
                    and self.settings().local_list_enabled:
                self._report_local_list_conflict(id_tag, str(listed.get("status")), str(info.get("status")))
            return
        if self.app.config.get_bool("AuthorizationCacheEnabled"):
            store.auth_cache.upsert(id_tag, info)

    def _remember(self, id_tag: str, info: Mapping[str, Any]) -> None:
        key = id_tag.casefold()
        self._recent.pop(key, None)
        self._recent[key] = dict(info)
        while len(self._recent) > RECENT_INFO_MAX:
            self._recent.pop(next(iter(self._recent)))

    def _report_local_list_conflict(self, id_tag: str, listed: str, central: str) -> None:
        # §3.5.2: a conflict between the local list and a StartTransaction.conf SHALL be
        # reported with a StatusNotification on connector 0, errorCode LocalListConflict.
        log.warning("local list says %s for %r, StartTransaction.conf says %s: LocalListConflict",
                    listed, id_tag, central)
        inoperative = self.app.store.kv_get("availability", "0", "Operative") == "Inoperative"
        payload: dict[str, Any] = {"connectorId": 0, "status": "Unavailable" if inoperative else "Available",
                                   "errorCode": "LocalListConflict", "info": f"idTag {id_tag}"[:50]}
        if self.app.clock.synced:
            payload["timestamp"] = self.app.clock.iso8601(self.app.clock.now())
        self.app.spawn(self.app.try_call("StatusNotification", payload), "local-list-conflict")

    async def on_clear_cache(self, payload: dict[str, Any]) -> dict[str, Any]:
        """ClearCache.req (§5.4): the cache is implemented, so Accepted once it is empty
        (errata 3.23's Rejected is for chargers without a cache); Rejected if the store fails."""
        try:
            self.app.store.auth_cache.clear()
        except Exception:
            log.exception("ClearCache failed")
            return {"status": "Rejected"}
        self._recent.clear()
        log.info("authorization cache cleared (ClearCache)")
        return {"status": "Accepted"}
