"""membership.plan: what a member does next, from a view of the group."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dispatch_aio._consume.assignment import assign
from dispatch_aio._consume.membership import plan

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
