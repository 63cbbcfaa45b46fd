"""Local Authorization List management: SendLocalList and GetLocalListVersion.

OCPP 1.6 §3.5.2, §5.10, §5.15, §6.41 (idTags unique), §7.1 (AuthorizationData),
§7.47 (UpdateStatus), errata 3.52 (listVersion 0 and -1 are reserved), §9.2 keys
LocalAuthListEnabled, LocalAuthListMaxLength, SendLocalListMaxLength.

- SendLocalList: NotSupported while LocalAuthListEnabled is false (the list is
  switched off: nothing is stored); Failed when the request carries more than
  SendLocalListMaxLength entries, repeats an idTag (idTags are case-insensitive,
  §7.28), uses listVersion <= 0 (errata 3.52), lacks idTagInfo in a Full update
  (§7.1), would leave more than LocalAuthListMaxLength entries, or the store
  fails; VersionMismatch for a Differential update whose listVersion is not
  above the current one (§7.47); else Accepted. The update is applied
  atomically (entries and version in one commit, store/auth.py): a refused or
  interrupted update leaves the previous list whole.
- A Differential entry addresses an existing entry whatever its letter case,
  so an update or removal never leaves two entries for one idTag.
- GetLocalListVersion: the version of the list; 0 when it is empty (§5.10); -1
  while LocalAuthListEnabled is false (the charger then behaves as one without
  a local list, consistent with SendLocalList's NotSupported).

The authorization service reads the list (store.local_list) when it authorizes.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from chargepoint.store.auth import FAILED, NOT_SUPPORTED

if TYPE_CHECKING:
    from chargepoint.app import ChargePointApp

log = logging.getLogger("chargepoint.local_list")

ENABLED_KEY = "LocalAuthListEnabled"


def canonical_entries(entries: list[dict[str, Any]], existing_tags: list[str]) -> list[dict[str, Any]] | None:
    """The entries with each idTag spelled as the stored entry it addresses (case-insensitive,
    §7.28); None when the request repeats an idTag (§6.41: all idTags MUST be unique)."""
    stored = {tag.casefold(): tag for tag in existing_tags}
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for entry in entries:
        tag = str(entry.get("idTag", ""))
        key = tag.casefold()
        if key in seen:
            return None
        seen.add(key)
        out.append({**entry, "idTag": stored.get(key, tag)})
    return out


class LocalListService:
    """app.local_list: SendLocalList / GetLocalListVersion."""

    def __init__(self, app: ChargePointApp) -> None:
        self.app = app
        app.on("SendLocalList", self.on_send_local_list)
        app.on("GetLocalListVersion", self.on_get_local_list_version)
        app.add_status_contributor(self._status)

    def enabled(self) -> bool:
        config = self.app.config
        return config.has(ENABLED_KEY) and config.get_bool(ENABLED_KEY)

    def version(self) -> int:
        """GetLocalListVersion.conf listVersion (§5.10)."""
        return self.app.store.local_list.version() if self.enabled() else -1

    async def on_get_local_list_version(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"listVersion": self.version()}

    async def on_send_local_list(self, payload: dict[str, Any]) -> dict[str, Any]:
        update_type = str(payload["updateType"])
        list_version = int(payload["listVersion"])
        entries = list(payload.get("localAuthorizationList") or [])
        if not self.enabled():
            log.info("SendLocalList refused: LocalAuthListEnabled is false")
            return {"status": NOT_SUPPORTED}
        max_send = self.app.config.get_int("SendLocalListMaxLength")
        if len(entries) > max_send:
            log.info("SendLocalList refused: %d entries, SendLocalListMaxLength %d", len(entries), max_send)
            return {"status": FAILED}
        store = self.app.store.local_list
        existing = list(store.entries()) if update_type == "Differential" else []
        canonical = canonical_entries(entries, existing)
        if canonical is None:
            log.info("SendLocalList refused: an idTag appears twice")
            return {"status": FAILED}
        try:
            status = store.apply(update_type, list_version, canonical,
                                 max_length=self.app.config.get_int("LocalAuthListMaxLength"))
        except sqlite3.Error:
            log.exception("SendLocalList: the store failed; the previous list stays")
            return {"status": FAILED}
        if status == "Accepted":
            log.info("local list %s update to version %d: %d entries", update_type, list_version, store.count())
        return {"status": status}

    def _status(self, result: dict[str, Any]) -> None:
        store = self.app.store.local_list
        result["local_list"] = {"enabled": self.enabled(), "version": store.version(), "entries": store.count()}
