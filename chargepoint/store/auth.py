"""Authorization cache and local authorization list (OCPP 1.6 §3.5.1, §3.5.2, §5.15).

Two distinct structures (§3.5.3): the cache is filled by the charger from every
IdTagInfo the central system sends (Authorize, StartTransaction and
StopTransaction confirmations); the local list changes only through
SendLocalList. Both persist across reboots, resets and power cuts (errata 3.4).

The cache is bounded: when full, NOT-valid entries go first, then the oldest
valid ones (§3.5.1). "Oldest" is by last update; a lookup does not write (no
flash write per card swipe).

`apply_local_list` is the pure SendLocalList rule; `LocalListRepo.apply` runs it
and stores the outcome atomically (entries and version in one commit).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from chargepoint.store.db import dumps, loads

if TYPE_CHECKING:
    from chargepoint.store.db import Store

log = logging.getLogger("chargepoint.store.auth")

DEFAULT_CACHE_CAP = 1000
LOCAL_LIST_NS = "local_list"

# SendLocalList.conf statuses (OCPP 1.6 §7.47).
ACCEPTED = "Accepted"
FAILED = "Failed"
NOT_SUPPORTED = "NotSupported"
VERSION_MISMATCH = "VersionMismatch"


def apply_local_list(
    current_version: int,
    entries: Mapping[str, dict[str, Any]],
    update_type: str,
    list_version: int,
    new_entries: Iterable[Mapping[str, Any]] | None,
    max_length: int,
) -> tuple[str, int, dict[str, dict[str, Any]]]:
    """SendLocalList.req applied to a list: (status, version after, entries after).

    `entries` maps idTag -> IdTagInfo; `new_entries` are AuthorizationData
    ({"idTag", "idTagInfo"?}). On anything but Accepted the list and version are
    returned unchanged.
    - listVersion 0 and -1 are reserved for GetLocalListVersion (errata 3.52): Failed.
    - idTags must be unique within the request (§6.41): Failed otherwise.
    - Full: the entries replace the list; idTagInfo is required (§7.1): Failed without.
      An empty list clears it.
    - Differential: listVersion must exceed the current version, else
      VersionMismatch (§7.47); an entry with idTagInfo is added or updated, one
      without it is removed (§7.1); an empty list changes nothing but the version.
    - A result longer than LocalAuthListMaxLength: Failed (§9.2.2).
    """
    unchanged = (current_version, dict(entries))
    items = list(new_entries or ())
    if update_type not in ("Full", "Differential"):
        return (FAILED, *unchanged)
    if list_version <= 0:
        return (FAILED, *unchanged)
    tags = [str(item.get("idTag", "")) for item in items]
    if any(not tag for tag in tags) or len(set(tags)) != len(tags):
        return (FAILED, *unchanged)
    if update_type == "Full":
        if any(not isinstance(item.get("idTagInfo"), Mapping) for item in items):
            return (FAILED, *unchanged)
        result = {tag: dict(item["idTagInfo"]) for tag, item in zip(tags, items, strict=True)}
    else:
        if list_version <= current_version:
            return (VERSION_MISMATCH, *unchanged)
        result = dict(entries)
        for tag, item in zip(tags, items, strict=True):
            info = item.get("idTagInfo")
            if info is None:
                result.pop(tag, None)
            elif isinstance(info, Mapping):
                result[tag] = dict(info)
            else:
                return (FAILED, *unchanged)
    if len(result) > max_length:
        return (FAILED, *unchanged)
    return (ACCEPTED, list_version, result)


class AuthCacheRepo:
    def __init__(self, store: Store, *, cap: int = DEFAULT_CACHE_CAP) -> None:
        self._store = store
        self.cap = cap

    def get(self, id_tag: str) -> dict[str, Any] | None:
        # IdToken is case-insensitive (OCPP 1.6 §7.28); SQLite's NOCASE folds ASCII, as idTags are.
        row = self._store.query_one("SELECT info FROM auth_cache WHERE id_tag = ? COLLATE NOCASE"
                                    " ORDER BY touched DESC LIMIT 1", (id_tag,))
        return None if row is None else dict(loads(row[0]))

    def upsert(self, id_tag: str, id_tag_info: Mapping[str, Any]) -> None:
        """Insert or update from a received IdTagInfo; evicts per §3.5.1 when over the cap."""
        valid = 1 if id_tag_info.get("status") == "Accepted" else 0
        with self._store.transaction():
            self._store.execute(
                "INSERT INTO auth_cache (id_tag, info, valid, touched)"
                " VALUES (?, ?, ?, (SELECT COALESCE(MAX(touched), 0) + 1 FROM auth_cache))"
                " ON CONFLICT (id_tag) DO UPDATE SET info = excluded.info, valid = excluded.valid,"
                " touched = excluded.touched",
                (id_tag, dumps(dict(id_tag_info)), valid),
            )
            excess = self.count() - max(1, self.cap)
            if excess > 0:
                # NOT-valid first, then the least recently updated valid ones; never the one just written.
                self._store.execute(
                    "DELETE FROM auth_cache WHERE id_tag IN (SELECT id_tag FROM auth_cache WHERE id_tag != ?"
                    " ORDER BY valid ASC, touched ASC LIMIT ?)",
                    (id_tag, excess),
                )

    def delete(self, id_tag: str) -> bool:
        return self._store.execute("DELETE FROM auth_cache WHERE id_tag = ?", (id_tag,)).rowcount > 0

    def clear(self) -> None:
        """ClearCache.req (OCPP 1.6 §5.4)."""
        self._store.execute("DELETE FROM auth_cache")

    def count(self) -> int:
        row = self._store.query_one("SELECT COUNT(*) FROM auth_cache")
        return 0 if row is None else int(row[0])

    def items(self) -> dict[str, dict[str, Any]]:
        rows = self._store.query("SELECT id_tag, info FROM auth_cache ORDER BY touched")
        return {r[0]: dict(loads(r[1])) for r in rows}


class LocalListRepo:
    def __init__(self, store: Store) -> None:
        self._store = store

    def version(self) -> int:
        """GetLocalListVersion: 0 when the list is empty or never set (§5.10)."""
        return int(self._store.kv.get(LOCAL_LIST_NS, "version", 0))

    def get(self, id_tag: str) -> dict[str, Any] | None:
        # IdToken is case-insensitive (OCPP 1.6 §7.28).
        row = self._store.query_one("SELECT info FROM local_list WHERE id_tag = ? COLLATE NOCASE LIMIT 1",
                                    (id_tag,))
        return None if row is None else dict(loads(row[0]))

    def entries(self) -> dict[str, dict[str, Any]]:
        rows = self._store.query("SELECT id_tag, info FROM local_list ORDER BY id_tag")
        return {r[0]: dict(loads(r[1])) for r in rows}

    def count(self) -> int:
        row = self._store.query_one("SELECT COUNT(*) FROM local_list")
        return 0 if row is None else int(row[0])

    def apply(
        self,
        update_type: str,
        list_version: int,
        new_entries: Iterable[Mapping[str, Any]] | None,
        max_length: int,
    ) -> str:
        """Apply a SendLocalList.req atomically; returns the SendLocalList.conf status."""
        items = list(new_entries or ())
        with self._store.transaction():
            current = self.version()
            if update_type == "Differential":
                # Only the touched tags matter, but the size check needs the count after the update.
                touched = {str(i.get("idTag", "")) for i in items}
                existing = self._subset(touched)
                status, version, result = apply_local_list(current, existing, update_type, list_version, items,
                                                           max_length=max_length - (self.count() - len(existing)))
                if status == ACCEPTED:
                    for tag in touched:
                        if tag in result:
                            self._store.execute(
                                "INSERT INTO local_list (id_tag, info) VALUES (?, ?)"
                                " ON CONFLICT (id_tag) DO UPDATE SET info = excluded.info",
                                (tag, dumps(result[tag])),
                            )
                        else:
                            self._store.execute("DELETE FROM local_list WHERE id_tag = ?", (tag,))
            else:
                status, version, result = apply_local_list(current, {}, update_type, list_version, items, max_length)
                if status == ACCEPTED:
                    self._store.execute("DELETE FROM local_list")
                    self._store.connection.executemany(
                        "INSERT INTO local_list (id_tag, info) VALUES (?, ?)",
                        [(tag, dumps(info)) for tag, info in result.items()],
                    )
            if status == ACCEPTED:
                # Version 0 means "empty" to GetLocalListVersion (§5.10).
                stored_version = version if self.count() > 0 else 0
                self._store.kv.put(LOCAL_LIST_NS, "version", stored_version)
        if status != ACCEPTED:
            log.info("SendLocalList %s version %d refused: %s (current version %d)", update_type, list_version,
                     status, current)
        return status

    def _subset(self, tags: Iterable[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for tag in tags:
            info = self.get(tag)
            if info is not None:
                out[tag] = info
        return out
