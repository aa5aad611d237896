"""membership.plan: what a member does next, from a view of the group."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from dispatch_aio._consume.assignment import assign
from dispatch_aio._consume.membership import Plan, plan

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_lone_member_acquires_everything_free() -> None:
    step = plan(
        "a",
        {"a"},
        {0: None, 1: None},
        {0: 0, 1: 0},
        {},
        set(),
        now=NOW,
        next_expiry=None,
        heartbeat=3.0,
        partitions=2,
    )
    assert step.acquire == (0, 1)
    assert step.release == ()
    assert step.lost == ()
    assert step.next_check == 3.0


def test_a_joiner_waits_while_the_holder_drains_then_the_holder_releases() -> None:
    owners = dict.fromkeys(range(4), "a")
    epochs = dict.fromkeys(range(4), 1)
    joiner = plan(
        "b",
        {"a", "b"},
        owners,
        epochs,
        {},
        set(),
        now=NOW,
        next_expiry=None,
        heartbeat=3.0,
        partitions=4,
    )
    assert joiner.acquire == ()  # nothing is free yet
    assert joiner.next_check == 0.5
    holder = plan(
        "a",
        {"a", "b"},
        owners,
        epochs,
        epochs,
        {2},
        now=NOW,
        next_expiry=None,
        heartbeat=3.0,
        partitions=4,
    )
    target = assign({"a", "b"}, owners, 4)
    assert set(holder.hand_over) == {p for p, m in target.items() if m == "b"}
    assert 2 not in holder.release  # still has an event in flight
    assert set(holder.release) == set(holder.hand_over) - {2}


def test_a_lease_taken_over_is_lost_at_once() -> None:
    step = plan(
        "a",
        {"a", "b"},
        {0: "b", 1: "a"},
        {0: 5, 1: 1},
        {0: 4, 1: 1},
        {0},
        now=NOW,
        next_expiry=None,
        heartbeat=3.0,
        partitions=2,
    )
    assert step.lost == (0,)
    assert step.hand_over == ()


def test_the_next_look_is_just_after_another_member_expires() -> None:
    owners = {0: "a", 1: None}
    step = plan(
        "a",
        {"a", "c"},
        owners,
        {0: 1, 1: 1},
        {0: 1},
        set(),
        now=NOW,
        next_expiry=NOW + timedelta(seconds=1),
        heartbeat=3.0,
        partitions=2,
    )
    assert 1.0 < step.next_check < 1.2


def test_leases_the_view_gives_back_are_adopted() -> None:
    step = plan(
        "a",
        {"a"},
        {0: "a", 1: "a"},
        {0: 3, 1: 3},
        {1: 3},
        set(),
        now=NOW,
        next_expiry=None,
        heartbeat=3.0,
        partitions=2,
    )
    assert step.adopt == (0,)
    assert step.lost == ()


# -- backlogs and offers (ADR 0006, part E) -----------------------------------------


def _two() -> dict[int, str | None]:
    """a holds 0-3, b holds 4-7 (every epoch 1)."""
    return {p: ("a" if p < 4 else "b") for p in range(8)}


def _plan(member: str, owners: dict[int, str | None], **kw: Any) -> Plan:
    epochs = dict.fromkeys(owners, 1)
    held = {p: 1 for p, o in owners.items() if o == member}
    return plan(
        member,
        {"a", "b"},
        owners,
        epochs,
        held,
        set(),
        now=NOW,
        next_expiry=None,
        heartbeat=3.0,
        partitions=len(owners),
        **kw,
    )


def test_the_member_with_the_backlog_offers_an_idle_partition_once_reports_settle() -> None:
    owners = _two()
    backlog = {0: 100, 1: 100, 2: 100}
    settled = NOW - timedelta(seconds=1)
    donor = _plan("a", owners, backlog=backlog, last_report=settled, running={0})
    # 300 against 0: one partition of 100 goes to b (never the running one); then 200
    # against 100 is left, which no single partition can narrow.
    assert donor.offer == ((1, "b"),)
    assert donor.release == ()
    assert donor.lost == ()
    # The receiver gives nothing: it waits for the offer.
    assert _plan("b", owners, backlog=backlog, last_report=settled).offer == ()


def test_no_offer_while_reports_are_still_coming_in() -> None:
    owners = _two()
    backlog = {0: 100, 1: 100, 2: 100}
    fresh = NOW - timedelta(seconds=0.04)
    step = _plan("a", owners, backlog=backlog, last_report=fresh)
    assert step.offer == ()
    # It looks again just after they settle.
    assert 0.05 <= step.next_check <= 0.08


def test_an_offered_partition_is_acquired_by_its_receiver_and_the_excess_goes_back() -> None:
    owners = _two()
    owners[1] = None  # released by a, offered to b
    backlog = {0: 100, 1: 100, 2: 100}
    settled = NOW - timedelta(seconds=1)
    receiver = _plan("b", owners, backlog=backlog, offers={1: "b"}, last_report=settled)
    assert receiver.acquire == (1,)
    assert receiver.adopt == ()  # free, not held: acquired, not adopted
    # b now holds one too many: the partition with the least queued (the highest number
    # among equals) goes back to a.
    assert receiver.hand_over == (7,)
    assert receiver.release == (7,)
    donor = _plan("a", owners, backlog=backlog, offers={1: "b"}, last_report=settled)
    assert donor.acquire == ()  # not 1: it stands offered to b
    assert donor.offer == ()
    # Once the offer lapses (the view drops it), the count-fair rule gives 1 back to a.
    lapsed = _plan("a", owners, backlog=backlog, last_report=settled)
    assert lapsed.acquire == (1,)
