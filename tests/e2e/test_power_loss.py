"""Never lose a transaction: a power cut (SIGKILL of the real daemon process) at each phase
of a transaction, a restart on the same state directory, and then what the central system
received once everything has drained.

OCPP 1.6 §3.7 (transaction messages queued durably, delivered in order, resent until
confirmed), §4.8 / §4.10 (StartTransaction, StopTransaction: one stop per transaction),
§7.36 Reason PowerLoss, errata 3.18 (transactionId -1 only for a Start given up: never
expected here), OCPP-J errata 3.1 (an identical resend is the same message), field-notes
§6 (power-cut recovery). The bundled central system books transactions strictly (a second
stop, an unknown transactionId, MeterValues after a stop, meterStop below meterStart are
violations); on top of that these tests check, per transaction, that every energy register
the central system saw lies between meterStart and meterStop and never decreases, and that
timestamps run forward.

The simulated EV stays plugged across the kill (the simulator's state lives in the state
directory). With free vend ([authorization] free_vend_id_tag) the restarted daemon starts a
new transaction for it; with a card the connector shows Finishing and nothing starts. Each
test ends by unplugging the EV and letting the queue drain.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chargepoint.csms.server import CentralSystem, Received
from tests.support.harness import CP_ID, ChargerEnv, DaemonProcess, charger_env, eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

WAIT_S = 30.0
TAG = "TAG-POWERCUT"
FREE_VEND = "FREEVEND"
REGISTER = "Energy.Active.Import.Register"
# The central system answers late (s) to hold a message "sent but not confirmed"; the charger's
# call timeout is 5 s, so the kill comes long before the answer.
HOLD_S = 30.0


@dataclass(frozen=True)
class Phase:
    name: str
    free_vend: bool      # the transaction starts by plugging in; else by a card
    stop_by: str | None  # how it is stopped before the kill: "card", "unplug", "remote"; None: running
    reason: str          # the StopTransaction reason the central system must end up with
    transactions: int    # how many transactions the central system must have in the end


PHASES = [
    Phase("a_started_offline_start_not_sent", True, None, "PowerLoss", 2),
    Phase("b_start_sent_not_confirmed", False, None, "PowerLoss", 1),
    Phase("c_start_confirmed", True, None, "PowerLoss", 2),
    Phase("d_mid_metering", False, None, "PowerLoss", 1),
    Phase("e_stop_queued_not_sent", False, "card", "Local", 1),
    Phase("f_stop_sent_not_confirmed", False, "unplug", "EVDisconnected", 1),
    Phase("g_stop_confirmed", True, "remote", "Remote", 2),
]


# --------------------------------------------------------------------------- helpers


async def daemon_status(env: ChargerEnv) -> dict[str, Any] | None:
    """The daemon's `status`, or None while it is not answering (starting, killed)."""
    try:
        return await env.astatus()
    except (OSError, AssertionError, ValueError):
        return None


async def connector_view(env: ChargerEnv) -> dict[str, Any]:
    status = await eventually(lambda: daemon_status(env), timeout_s=WAIT_S, message="status answered")
    entry: dict[str, Any] = status["connectors"][0]
    return entry


async def wait_registered(env: ChargerEnv, after: int) -> None:
    await env.csms.wait_for("BootNotification", after_index=after, timeout_s=WAIT_S)
    await env.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1, after_index=after,
                            timeout_s=WAIT_S)


async def wait_offline(env: ChargerEnv) -> None:
    async def offline() -> bool:
        status = await daemon_status(env)
        return status is not None and status["connection"] != "connected"
    await eventually(offline, timeout_s=WAIT_S, message="daemon offline")


async def wait_local_transaction(env: ChargerEnv) -> dict[str, Any]:
    async def running() -> dict[str, Any] | None:
        entry = await connector_view(env)
        return entry if "transaction" in entry else None
    result: dict[str, Any] = await eventually(running, timeout_s=WAIT_S, message="transaction running")
    return result


async def wait_confirmed(env: ChargerEnv) -> int:
    """StartTransaction.conf committed by the daemon (not just answered by the central system)."""
    async def confirmed() -> int | None:
        entry = await connector_view(env)
        return entry["transaction_id"]
    result: int = await eventually(confirmed, timeout_s=WAIT_S, message="start confirmed")
    return result


async def wait_drained(env: ChargerEnv) -> None:
    async def drained() -> bool:
        status = await daemon_status(env)
        return status is not None and status["queue"]["pending"] == 0 and status["connection"] == "connected"
    await eventually(drained, timeout_s=WAIT_S, message="queue drained")


def store_rows(env: ChargerEnv, sql: str) -> list[tuple[Any, ...]]:
    """Read the daemon's SQLite file directly (WAL: a reader beside the running daemon)."""
    db = sqlite3.connect(f"file:{env.state_dir / 'chargepoint.db'}?mode=ro", uri=True, timeout=10)
    try:
        return list(db.execute(sql).fetchall())
    finally:
        db.close()


async def begin(env: ChargerEnv, phase: Phase) -> None:
    """Start the transaction: plug in (free vend), or plug in and present the card."""
    await env.asim("sim.plug", connector=1)
    if not phase.free_vend:
        await eventually(lambda: _status_is(env, "Preparing"), timeout_s=WAIT_S, message="Preparing")
        await env.asim("sim.swipe", id_tag=TAG, connector=1)


async def _status_is(env: ChargerEnv, status: str) -> bool:
    entry = await connector_view(env)
    return bool(entry["status"] == status)


async def end(env: ChargerEnv, phase: Phase, transaction_id: int) -> None:
    """Stop the transaction the way the phase says."""
    if phase.stop_by == "card":
        await env.asim("sim.swipe", id_tag=TAG, connector=1)
    elif phase.stop_by == "unplug":
        await env.asim("sim.unplug", connector=1)
    elif phase.stop_by == "remote":
        answer = await env.csms.call(CP_ID, "RemoteStopTransaction", {"transactionId": transaction_id})
        assert answer == {"status": "Accepted"}


def meter_values_of(csms: CentralSystem, transaction_id: int) -> list[Received]:
    return [r for r in csms.received_of("MeterValues") if r.payload.get("transactionId") == transaction_id]


async def drive_until_kill(env: ChargerEnv, proc: DaemonProcess, phase: Phase) -> None:
    """Take the transaction to the phase, then cut the power. Leaves the central system
    running and answering promptly for the restart."""
    csms = env.csms
    letter = phase.name[0]
    if letter == "a":
        await csms.stop()
        await wait_offline(env)
        await begin(env, phase)
        entry = await wait_local_transaction(env)
        assert entry["transaction_id"] is None
        # The Start and a few samples wait in the queue.
        await eventually(lambda: store_rows(env, "SELECT COUNT(*) FROM queue WHERE action = 'MeterValues'")[0][0] >= 2,
                         timeout_s=WAIT_S, message="samples queued offline")
        proc.kill()
        await csms.start()
        return
    if letter == "b":
        csms.delay("StartTransaction", HOLD_S)
        await begin(env, phase)
        await csms.wait_for("StartTransaction", timeout_s=WAIT_S)
        proc.kill()
        csms.delay("StartTransaction", 0)
        return
    await begin(env, phase)
    transaction_id = await wait_confirmed(env)
    if letter == "c":
        proc.kill()
        return
    await eventually(lambda: len(meter_values_of(csms, transaction_id)) >= 3, timeout_s=WAIT_S,
                     message="MeterValues arrived")
    if letter == "d":
        proc.kill()
        return
    if letter == "e":
        await csms.stop()
        await wait_offline(env)
        await end(env, phase, transaction_id)
        await eventually(lambda: store_rows(env, "SELECT COUNT(*) FROM queue WHERE action = 'StopTransaction'")
                         [0][0] == 1, timeout_s=WAIT_S, message="stop queued")
        proc.kill()
        await csms.start()
        return
    if letter == "f":
        csms.delay("StopTransaction", HOLD_S)
        await end(env, phase, transaction_id)
        await csms.wait_for("StopTransaction", timeout_s=WAIT_S)
        proc.kill()
        csms.delay("StopTransaction", 0)
        return
    assert letter == "g"
    await end(env, phase, transaction_id)
    await csms.wait_for("StopTransaction", timeout_s=WAIT_S)
    await wait_drained(env)   # the stop's confirmation is committed: nothing is owed for it
    proc.kill()


# --------------------------------------------------------------------------- the ledger


def registers(payload: dict[str, Any], key: str) -> list[tuple[str, int]]:
    """(timestamp, Wh) of every energy register value in a MeterValues / StopTransaction payload."""
    return [(mv["timestamp"], int(sv["value"])) for mv in payload.get(key, []) for sv in mv["sampledValue"]
            if sv.get("measurand", REGISTER) == REGISTER]


def assert_ledger(csms: CentralSystem, phase: Phase) -> None:
    """What the central system holds once everything is delivered."""
    transactions = sorted(csms.transactions.values(), key=lambda t: t.transaction_id)
    assert len(transactions) == phase.transactions, [t.start for t in transactions]
    # Every StartTransaction the charger sent is one of them (a resend is identical: the same one).
    starts = {json.dumps(r.payload, sort_keys=True) for r in csms.received_of("StartTransaction")}
    assert len(starts) == len(transactions)
    # Errata 3.18: never -1 (no Start was given up), never an id the central system did not issue.
    for rec in csms.received_of("MeterValues") + csms.received_of("StopTransaction"):
        assert rec.payload.get("transactionId") in csms.transactions, rec.payload
    for tx in transactions:
        assert tx.stop is not None, f"transaction {tx.transaction_id} never stopped"
        # Exactly one stop: every StopTransaction for it is the same message (a resend).
        stops = [r.payload for r in csms.received_of("StopTransaction")
                 if r.payload["transactionId"] == tx.transaction_id]
        assert all(p == stops[0] for p in stops), stops
        meter_start, meter_stop = tx.start["meterStart"], tx.stop["meterStop"]
        start_ts, stop_ts = tx.start["timestamp"], tx.stop["timestamp"]
        assert meter_start <= meter_stop
        assert start_ts <= stop_ts
        # MeterValues (identical resends already folded by the central system), in arrival order.
        sampled = [reading for payload in tx.meter_values for reading in registers(payload, "meterValue")]
        stamps = [payload["meterValue"][0]["timestamp"] for payload in tx.meter_values]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps), stamps
        for ts, wh in sampled:
            assert meter_start <= wh <= meter_stop, (tx.transaction_id, meter_start, wh, meter_stop)
            assert start_ts <= ts <= stop_ts, (tx.transaction_id, start_ts, ts, stop_ts)
        assert [wh for _, wh in sampled] == sorted(wh for _, wh in sampled)
        # transactionData of the stop: the same bounds, in order.
        data = registers(tx.stop, "transactionData")
        assert [wh for _, wh in data] == sorted(wh for _, wh in data)
        assert all(meter_start <= wh <= meter_stop for _, wh in data), (meter_start, data, meter_stop)
        assert [ts for ts, _ in data] == sorted(ts for ts, _ in data)
    first = transactions[0]
    assert first.stop is not None and first.stop["reason"] == phase.reason
    assert first.id_tag == (FREE_VEND if phase.free_vend else TAG)
    csms.assert_no_violations()


# --------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("phase", PHASES, ids=[p.name for p in PHASES])
async def test_power_cut_at_each_phase_stops_every_transaction_exactly_once(tmp_path: Path, phase: Phase) -> None:
    async with charger_env(tmp_path, MeterValueSampleInterval=1, AllowOfflineTxForUnknownId=True,
                           StopTxnSampledData=REGISTER, TransactionMessageRetryInterval=1,
                           HeartbeatInterval=3600) as env:
        if phase.free_vend:
            env.doc["authorization"] = {"free_vend_id_tag": FREE_VEND}
        csms = env.csms
        with env.daemon() as proc:
            await wait_registered(env, after=0)
            await drive_until_kill(env, proc, phase)
            before_restart = len(csms.received)

            proc.start()
            await wait_registered(env, after=before_restart)
            # The interrupted (or stopped) transaction is settled by the restarted daemon.
            await eventually(lambda: csms.transactions and csms.transactions[min(csms.transactions)].stop is not None,
                             timeout_s=WAIT_S, message="first transaction stopped")
            if phase.free_vend:
                # The EV is still plugged: free vend starts a new transaction after the restart.
                await eventually(lambda: len(csms.transactions) >= 2, timeout_s=WAIT_S, message="new transaction")
            else:
                entry = await connector_view(env)
                assert entry["transaction_id"] is None and "transaction" not in entry
            await env.asim("sim.unplug", connector=1)
            await eventually(lambda: all(t.stop is not None for t in csms.transactions.values()), timeout_s=WAIT_S,
                             message="every transaction stopped")
            await wait_drained(env)
            entry = await connector_view(env)
            assert "transaction" not in entry
        assert_ledger(csms, phase)
        assert_resent(csms, phase, before_restart)


def assert_resent(csms: CentralSystem, phase: Phase, before_restart: int) -> None:
    """What the restarted daemon sent for the first transaction, per phase."""
    first = csms.transactions[min(csms.transactions)]
    assert first.stop is not None
    if phase.stop_by is None:
        assert "idTag" not in first.stop   # PowerLoss: nobody presented a card (§4.10)

    def sent(action: str, *, after: bool) -> list[Received]:
        window = csms.received[before_restart:] if after else csms.received[:before_restart]
        return [r for r in window if r.action == action and (
            r.payload.get("transactionId") == first.transaction_id if action != "StartTransaction"
            else r.payload == first.start)]

    letter = phase.name[0]
    if letter == "a":
        assert sent("StartTransaction", after=False) == []   # queued offline, sent after the restart
        assert len(sent("StartTransaction", after=True)) == 1
    if letter == "b":
        # Sent, unconfirmed, killed: the very same Start again (the central system: same transaction).
        assert sent("StartTransaction", after=False) and sent("StartTransaction", after=True)
    if letter in "cd":
        assert len(sent("StartTransaction", after=False)) == 1 and sent("StartTransaction", after=True) == []
    if letter in "abcd":
        assert sent("StopTransaction", after=False) == [] and len(sent("StopTransaction", after=True)) == 1
    if letter == "e":
        assert sent("StopTransaction", after=False) == [] and len(sent("StopTransaction", after=True)) == 1
    if letter == "f":
        assert sent("StopTransaction", after=False) and sent("StopTransaction", after=True)
    if letter == "g":
        # Confirmed before the cut: nothing more is sent for it.
        assert sent("StopTransaction", after=False) and sent("StopTransaction", after=True) == []
        assert sent("MeterValues", after=True) == []
