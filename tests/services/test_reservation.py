"""The reservation rules as pure functions (OCPP 1.6 §5.13, §7.40, §9.3.1)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from chargepoint.services.reservation import (
    ConnectorView,
    blocks,
    held_connectors,
    is_expired,
    matches,
    reservation_for,
    reserve_status,
)
from chargepoint.store.profiles import Reservation

FUTURE = "2099-01-01T00:00:00Z"


def res(reservation_id: int, connector_id: int, id_tag: str = "TAG", parent: str | None = None,
        expiry: str = FUTURE) -> Reservation:
    return Reservation(reservation_id, connector_id, id_tag, parent, expiry)


def views(*statuses: str, plugged: tuple[int, ...] = (), busy: tuple[int, ...] = ()) -> dict[int, ConnectorView]:
    return {i: ConnectorView(i, s, plugged=i in plugged, transaction=i in busy)
            for i, s in enumerate(statuses, start=1)}


def status(connector_id: int, v: dict[int, ConnectorView], rs: list[Reservation], *, operative: bool = True,
           zero: bool = True) -> str:
    return reserve_status(connector_id, v, rs, charge_point_operative=operative, zero_supported=zero)


def test_reserve_status_per_connector_7_40() -> None:
    assert status(1, views("Available"), []) == "Accepted"
    assert status(2, views("Available"), []) == "Rejected"            # unknown connector
    assert status(1, views("Faulted"), []) == "Faulted"
    assert status(1, views("Unavailable"), []) == "Unavailable"
    assert status(1, views("Available"), [], operative=False) == "Unavailable"
    assert status(1, views("Preparing", plugged=(1,)), []) == "Occupied"
    assert status(1, views("Charging", plugged=(1,), busy=(1,)), []) == "Occupied"
    assert status(1, views("Reserved"), [res(1, 1)]) == "Occupied"    # reserved for another (or the same) idTag
    # The only connector held by a connector-0 reservation cannot be reserved on its own.
    assert status(1, views("Reserved"), [res(1, 0)]) == "Occupied"
    assert status(1, views("Available", "Available"), [res(1, 0)]) == "Accepted"


def test_reserve_status_connector_zero_5_13() -> None:
    assert status(0, views("Available"), [], zero=False) == "Rejected"   # §9.3.1 not supported
    assert status(0, views("Available"), []) == "Accepted"
    assert status(0, views("Available"), [res(1, 0)]) == "Occupied"
    assert status(0, views("Available", "Available"), [res(1, 0)]) == "Accepted"
    assert status(0, views("Available", "Available"), [res(1, 0), res(2, 1)]) == "Occupied"
    assert status(0, views("Faulted", "Faulted"), []) == "Faulted"
    assert status(0, views("Faulted", "Unavailable"), []) == "Unavailable"
    assert status(0, views("Available"), [], operative=False) == "Unavailable"
    assert status(0, views("Charging", "Faulted", busy=(1,), plugged=(1,)), []) == "Occupied"


def test_matching_by_idtag_or_parent_case_insensitive_5_13() -> None:
    r = res(1, 1, "Card1", parent="Family")
    assert matches(r, "card1", None)
    assert matches(r, "other", "FAMILY")
    assert matches(r, "family", None)          # the incoming idTag may equal the reservation's parent
    assert not matches(r, "other", None)
    assert not matches(res(1, 1, "Card1"), "other", "Card2")


def test_reservation_for_prefers_the_connectors_own_then_connector_zero() -> None:
    rs = [res(1, 1, "A"), res(2, 0, "B")]
    assert reservation_for(1, "A", None, rs) == rs[0]
    assert reservation_for(1, "B", None, rs) is None      # connector 1 is A's
    assert reservation_for(2, "B", None, rs) == rs[1]
    assert reservation_for(2, "A", None, rs) is None       # A's reservation is for connector 1 only


def test_expiry_needs_a_synchronised_clock() -> None:
    r = res(1, 1, expiry="2026-01-01T00:00:00Z")
    assert is_expired(r, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert not is_expired(r, dt.datetime(2025, 12, 31, 23, 59, tzinfo=dt.UTC))
    assert not is_expired(r, None)


_status = st.sampled_from(["Available", "Preparing", "Charging", "Faulted", "Unavailable", "Finishing"])


@st.composite
def scenes(draw: st.DrawFn) -> tuple[dict[int, ConnectorView], list[Reservation]]:
    n = draw(st.integers(1, 4))
    v = {}
    for cid in range(1, n + 1):
        s = draw(_status)
        v[cid] = ConnectorView(cid, s, plugged=s in ("Preparing", "Charging", "Finishing") or draw(st.booleans()),
                               transaction=s == "Charging")
    specific = draw(st.sets(st.integers(1, n), max_size=n))
    rs = [res(10 + cid, cid, f"S{cid}") for cid in sorted(specific)]
    rs += [res(100 + i, 0, f"Z{i}") for i in range(draw(st.integers(0, 3)))]
    return v, rs


@given(scenes())
def test_shown_reserved_is_exactly_refused_to_strangers(scene: tuple[dict[int, ConnectorView],
                                                                     list[Reservation]]) -> None:
    """The transaction service refuses a stranger on a connector shown Reserved: the display
    (held_connectors) and the rule (blocks) must agree on every connector that could start."""
    v, rs = scene
    held = held_connectors(v, rs)
    for cid, view in v.items():
        if view.holdable():
            assert (cid in held) == blocks(cid, "STRANGER", None, v, rs)
    for r in rs:
        if r.connector_id != 0:
            assert r.connector_id in held and not blocks(r.connector_id, r.id_tag, None, v, rs)
        else:
            # The reserved idTag is never refused by its own reservation anywhere.
            assert all(not blocks(cid, r.id_tag, None, v, rs) for cid in v if cid not in
                       {x.connector_id for x in rs})
