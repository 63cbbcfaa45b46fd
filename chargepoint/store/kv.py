"""Namespaced key/value state, values as JSON.

For small, rarely written state: OCPP configuration keys (namespace of
services.configuration), connector availability, firmware update progress,
the local list version. Each put is one committed transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chargepoint.store.db import dumps, loads

if TYPE_CHECKING:
    from chargepoint.store.db import Store


class KeyValueRepo:
    def __init__(self, store: Store) -> None:
        self._store = store

    def get(self, ns: str, key: str, default: Any = None) -> Any:
        row = self._store.query_one("SELECT value FROM kv WHERE ns = ? AND key = ?", (ns, key))
        return default if row is None else loads(row[0])

    def put(self, ns: str, key: str, value: Any) -> None:
        self._store.execute(
            "INSERT INTO kv (ns, key, value) VALUES (?, ?, ?)"
            " ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value",
            (ns, key, dumps(value)),
        )

    def delete(self, ns: str, key: str) -> bool:
        return self._store.execute("DELETE FROM kv WHERE ns = ? AND key = ?", (ns, key)).rowcount > 0

    def items(self, ns: str) -> dict[str, Any]:
        rows = self._store.query("SELECT key, value FROM kv WHERE ns = ? ORDER BY key", (ns,))
        return {row[0]: loads(row[1]) for row in rows}
