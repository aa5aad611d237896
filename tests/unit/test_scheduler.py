"""The consumer's scheduler, without a database: order, groups, retries, cursors, memory."""

from __future__ import annotations

from typing import Any

from dispatch_aio._consume._items import Item, Outcome
from dispatch_aio._consume._scheduler import Scheduler

TYPE = "credit.locked"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def row(
    position: int, subject: str = "s1", *, xid: int | None = None, handled: bool = False
) -> dict[str, Any]:
    return {
        "position": position,
        "xid": xid if xid is not None else position,
        "event_id": f"evt_{position}",
        "event_type": TYPE,
        "subject": subject,
        "handled": handled,
    }


def make(r: dict[str, Any]) -> Item:
    return Item(
        position=r["position"],
        xid=r["xid"],
        event_id=r["event_id"],
        event_type=r["event_type"],
        subject=r["subject"],
        row=r,
    )


def scheduler(**options: Any) -> Scheduler:
    return Scheduler({TYPE: (0, 0)}, **options)


def take_group(s: Scheduler) -> list[Item]:
    """The group a worker builds when its handlers take no time: one subject, then more
    while the group is below its fair share."""
    posted: list[str] = []
    group = s.take_subject(posted)
    if group and not group[0].isolate:
        while more := s.take_more(len(group), posted):
            group.extend(more)
    return group


def test_one_subject_runs_in_position_order_one_group_at_a_time() -> None:
    s = scheduler(workers=1, max_group=10)
    for position in (3, 1, 2):
        s.read(row(position), make)
    group = take_group(s)
    assert [i.position for i in group] == [1, 2, 3]
    assert take_group(s) == []  # the subject is busy


def test_subjects_are_spread_over_workers() -> None:
    s = scheduler(workers=2, max_group=10)
    for position, subject in enumerate(["a", "b", "c", "d"], start=1):
        s.read(row(position, subject), make)
    first = take_group(s)
    second = take_group(s)
    assert len(first) == len(second) == 2  # a fair share each
    assert {i.subject for i in first} | {i.subject for i in second} == {"a", "b", "c", "d"}


def test_a_subjects_queue_is_not_split_over_groups_by_the_fair_share() -> None:
    # 7 events for 4 workers: a fair share is 2. Subject a's 5 events run one after
    # another wherever they are: one group for them all, not three commits in a row.
    s = scheduler(workers=4, max_group=10)
    for position in range(1, 6):
        s.read(row(position, "a"), make)
    s.read(row(6, "b"), make)
    s.read(row(7, "c"), make)
    assert [i.position for i in take_group(s)] == [1, 2, 3, 4, 5]
    assert [i.position for i in take_group(s)] == [6, 7]
    # Still bounded by max_group.
    s = scheduler(workers=4, max_group=3)
    for position in range(1, 6):
        s.read(row(position, "a"), make)
    assert [i.position for i in take_group(s)] == [1, 2, 3]


def test_complete_moves_the_low_water_mark_over_the_finished_prefix_only() -> None:
    s = scheduler(workers=4, max_group=1)
    for position, subject in ((1, "a"), (2, "b"), (3, "c")):
        s.read(row(position, subject), make)
    groups = [take_group(s) for _ in range(3)]
    by_position = {g[0].position: g[0] for g in groups}
    s.complete(by_position[2], Outcome.HANDLED)
    s.complete(by_position[3], Outcome.HANDLED)
    # Just below 1, which has no outcome yet (ADR 0006: (xid, position - 1)).
    assert s.marks.moved() == {TYPE: (1, 0)}
    s.complete(by_position[1], Outcome.HANDLED)
    assert s.marks.moved() == {TYPE: (3, 3)}
    s.marks.flushed(s.marks.moved())
    assert s.marks.moved() == {}
    assert s.idle


def test_complete_handled_is_complete_for_each_event_of_a_group() -> None:
    s = scheduler(workers=1, max_group=10)
    for position, subject in ((1, "a"), (2, "b"), (3, "a"), (4, "c")):
        s.read(row(position, subject), make)
    group = take_group(s)
    first = [i for i in group if i.position != 1]
    s.complete_handled(first)
    assert all(i.done and i.row is None and i.event is None for i in first)
    assert sorted(s.inflight) == [1]
    assert s.marks.moved() == {TYPE: (1, 0)}  # 1 has no outcome yet
    s.complete_handled([i for i in group if i.position == 1])
    assert s.marks.moved() == {TYPE: (4, 4)}
    s.release(group)
    for position in (1, 2, 3, 4):  # an overlapping read sees them again: all done
        s.read(row(position, "a" if position in (1, 3) else "x"), make)
    assert take_group(s) == []
    assert s.idle


def test_retry_parks_the_subject_until_due_on_the_injected_clock() -> None:
    clock = Clock()
    s = scheduler(clock=clock, workers=1, max_group=10)
    s.read(row(1, "a"), make)
    s.read(row(2, "a"), make)
    first, second = take_group(s)
    s.requeue([second])
    s.retry(first, 5.0)
    s.release([first, second])
    s.read(row(3, "b"), make)
    # Subject a waits for its retry; b does not wait for a.
    assert [i.position for i in take_group(s)] == [3]
    clock.now += 4.9
    assert s.due() is not None
    assert take_group(s) == []
    clock.now += 0.2
    assert s.due() is None
    assert [i.position for i in take_group(s)] == [1, 2]


def test_dedup_hits_and_rereads_do_not_run_events_twice() -> None:
    s = scheduler()
    assert s.read(row(1, handled=True), make) is True
    s.read(row(2), make)
    [item] = take_group(s)
    s.complete(item, Outcome.HANDLED)
    s.release([item])
    s.read(row(2), make)  # an overlapping read sees it again
    assert take_group(s) == []
    assert s.marks.moved() == {TYPE: (2, 2)}


def test_an_isolated_event_runs_alone() -> None:
    s = scheduler(workers=1, max_group=10)
    for position, subject in ((1, "a"), (2, "b"), (3, "c")):
        s.read(row(position, subject), make)
    s.inflight[2].isolate = True
    groups = []
    while True:
        group = take_group(s)
        if not group:
            break
        groups.append([i.position for i in group])
    assert [2] in groups
    assert sorted(p for g in groups for p in g) == [1, 2, 3]


def test_reading_pauses_for_a_type_at_the_buffer_cap_behind_a_stuck_head() -> None:
    s = scheduler(workers=4, max_group=1, max_buffered=5)
    for position in range(1, 6):
        s.read(row(position, f"s{position}"), make)
    stuck = take_group(s)[0]
    assert stuck.position == 1
    while group := take_group(s):
        s.complete(group[0], Outcome.HANDLED)
        s.release(group)
    # Four finished events wait behind the stuck head: the cap is reached.
    assert s.marks.at_cap()
    assert s.buffered() == 5
    s.complete(stuck, Outcome.HANDLED)
    assert not s.marks.at_cap()
    assert s.marks.moved() == {TYPE: (5, 5)}
    assert s.buffered() == 0


def test_done_events_let_go_of_their_rows() -> None:
    s = scheduler()
    s.read(row(1), make)
    [item] = take_group(s)
    assert item.row is not None
    s.complete(item, Outcome.HANDLED)
    assert item.row is None
    assert item.event is None
    assert item.done


def test_a_dead_letter_goes_back_isolated_with_its_row() -> None:
    s = scheduler()
    s.read(row(1), make)
    [item] = take_group(s)
    s.dead_letter(item, "the row")
    s.release([item])
    [again] = take_group(s)
    assert again is item
    assert item.dead_letter == "the row"
    assert item.isolate


def test_replays_are_tracked_apart_from_the_cursor() -> None:
    s = scheduler()
    assert s.begin_replay("dlq_1")
    assert not s.begin_replay("dlq_1")
    replay = make(row(7, "\x00replay:dlq_1"))
    replay.replay_of = "dlq_1"
    s.add(replay, track=False)
    assert not s.idle
    [item] = take_group(s)
    s.complete(item, Outcome.REPLAYED)
    s.release([item])
    assert s.idle
    assert s.marks.moved() == {}


def test_on_ready_is_called_once_per_subject_becoming_ready() -> None:
    calls: list[int] = []
    s = Scheduler({TYPE: (0, 0)}, on_ready=lambda: calls.append(1))
    s.read(row(1, "a"), make)
    s.read(row(2, "a"), make)
    s.read(row(3, "b"), make)
    assert len(calls) == 2


def test_on_retry_is_called_when_a_retry_is_scheduled() -> None:
    calls: list[int] = []
    s = Scheduler({TYPE: (0, 0)}, on_retry=lambda: calls.append(1))
    s.read(row(1), make)
    [item] = take_group(s)
    s.retry(item, 1.0)
    assert calls == [1]


def test_the_cursor_never_passes_the_reader_s_bound() -> None:
    # The reader passed an id still in progress (5): its rows may still commit below
    # what was read, so the stored cursor stays below it whatever finishes above.
    s = scheduler(workers=4, max_group=10)
    s.read(row(10, "a", xid=9), make)
    s.marks.set_bound((5, 0))
    [item] = take_group(s)
    s.complete(item, Outcome.HANDLED)
    assert s.marks.moved() == {TYPE: (5, 0)}
    s.marks.set_bound((12, 0))
    s.marks.advance_all()
    assert s.marks.moved() == {TYPE: (9, 10)}  # the last row read: the same, in effect


def test_rows_below_a_type_s_own_start_are_skipped() -> None:
    s = Scheduler({TYPE: (7, 7)})
    assert s.read(row(3, xid=3), make) is False
    assert take_group(s) == []
    assert s.idle


def test_drop_forgets_queued_events_of_lost_partitions_only() -> None:
    s = scheduler(workers=1, max_group=1)
    for position, subject in ((1, "a"), (2, "a"), (3, "b")):
        r = row(position, subject)
        item = make(r)
        item.partition = 7 if subject == "a" else 9
        s.read(r, lambda _r, it=item: it)
    [running] = take_group(s)  # a's head runs: it stays until its group ends
    assert s.busy_partitions() == {7, 9}
    assert s.drop({7}) == 1  # a's second event, queued
    assert sorted(s.inflight) == [1, 3]
    s.release([running])
    assert [i.position for i in take_group(s)] == [3]


def test_backlog_and_running_partitions_tell_queued_from_running() -> None:
    """What a member reports (events without an outcome, per partition) and what it may
    give away (partitions with nothing in a running group)."""
    s = scheduler(workers=1, max_group=1)
    for position, subject, partition in ((1, "a", 7), (2, "a", 7), (3, "b", 9), (4, "c", 9)):
        r = row(position, subject)
        item = make(r)
        item.partition = partition
        s.read(r, lambda _r, it=item: it)
    assert s.backlog_by_partition() == {7: 2, 9: 2}
    assert s.running_partitions() == set()
    [running] = take_group(s)  # a's head: partition 7 now runs, 9 is only queued
    assert running.partition == 7
    assert s.running_partitions() == {7}
    assert s.backlog_by_partition() == {7: 2, 9: 2}  # running events count too
    assert s.drop({9}) == 2  # given away: its queued events go
    assert s.backlog_by_partition() == {7: 2}


def test_dropping_queued_events_frees_the_buffer_they_filled() -> None:
    """A full buffer of one partition's events, dropped (the partition was lost or given
    away): reading must be able to go on at once. The dropped entries used to stay in the
    type's pending events until a later outcome moved its mark; a process with nothing
    else in flight then never read again."""
    s = scheduler(workers=1, max_group=1, max_buffered=4)
    for position in range(1, 5):
        r = row(position, "a")
        item = make(r)
        item.partition = 7
        s.read(r, lambda _r, it=item: it)
    assert s.marks.at_cap()
    assert s.drop({7}) == 4
    assert not s.marks.at_cap()
    assert s.inflight == {}


def test_an_event_read_again_after_its_partition_came_back_is_queued_once_more() -> None:
    """Its partition was lost (queued events dropped) and gained again while an earlier
    event of the type still runs: the dropped entry is still among the type's pending
    events when the event is read again. Both entries share a key; the consumer must not
    fail on them, and the stored cursor must stay below the event until it is handled."""
    s = scheduler(workers=1, max_group=1)

    def read(position: int, subject: str, partition: int) -> None:
        r = row(position, subject)
        item = make(r)
        item.partition = partition
        s.read(r, lambda _r, it=item: it)

    read(1, "a", 9)
    read(2, "b", 7)
    read(3, "c", 9)
    [running] = take_group(s)  # a's event holds the type's mark below it
    assert running.position == 1
    assert s.drop({7}) == 1
    s.marks.restart((0, 0))
    read(2, "b", 7)  # the partition came back: its stream reads from its cursor again
    read(3, "c", 9)
    s.marks.set_bound((5, 5))
    s.complete(running, Outcome.HANDLED)
    s.release([running])
    s.marks.advance_all()
    assert s.marks.moved() == {TYPE: (2, 1)}  # below b's event, read again
    groups = [take_group(s), take_group(s)]
    assert sorted(i.position for g in groups for i in g) == [2, 3]
    for group in groups:
        for item in group:
            s.complete(item, Outcome.HANDLED)
        s.release(group)
    s.marks.advance_all()
    assert s.marks.moved() == {TYPE: (3, 3)}


def test_the_mark_stays_below_the_first_unfinished_key_whatever_the_read_order() -> None:
    """Rows of an ended transaction (a smaller xid) and pulled rows arrive after larger
    keys; events finish in any order. The stored cursor is always just below the
    smallest unfinished key (or at the largest read), and never moves back."""
    import random

    for seed in range(200):
        rng = random.Random(seed)
        s = scheduler(workers=1, max_group=1)
        keys = rng.sample(range(1, 40), 12)  # xids, some equal to others' positions
        rows = [
            row(position, f"s{position}", xid=xid)
            for position, xid in zip(range(1, 13), keys, strict=True)
        ]
        rng.shuffle(rows)
        for r in rows:
            s.read(r, make)
        s.marks.set_bound((100, 0))
        items = list(s.inflight.values())
        rng.shuffle(items)
        committed = (0, 0)
        for done, item in enumerate(items, start=1):
            s.complete(item, Outcome.HANDLED)
            left = [(i.xid, i.position) for i in items[done:]]
            expected = max((r["xid"], r["position"]) for r in rows)  # the largest read
            if left:
                xid, position = min(left)
                expected = min(expected, (xid, position - 1))
            committed = max(committed, expected)
            assert s.marks.cursors[TYPE].committed == committed, seed


def test_a_group_starts_with_the_longest_of_the_first_ready_subjects() -> None:
    s = scheduler(workers=4, max_group=50)
    s.read(row(1, "short"), make)
    for position in range(2, 6):
        s.read(row(position, "long"), make)
    s.read(row(6, "mid"), make)
    s.read(row(7, "mid"), make)
    assert {i.subject for i in s.take_subject()} == {"long"}
    assert {i.subject for i in s.take_subject()} == {"mid"}
    assert {i.subject for i in s.take_subject()} == {"short"}


def test_the_oldest_ready_subject_is_passed_over_a_bounded_number_of_times() -> None:
    s = scheduler(workers=1, max_group=50)
    s.read(row(1, "old"), make)
    position = 2
    for n in range(40):  # a stream of longer subjects keeps arriving behind it
        for _ in range(2):
            s.read(row(position, f"s{n}"), make)
            position += 1
    taken = [s.take_subject()[0].subject for _ in range(20)]
    assert "old" in taken[:17]


def test_a_running_group_takes_its_own_subjects_later_events_first() -> None:
    s = scheduler(workers=1, max_group=50)
    s.read(row(1, "a"), make)
    s.read(row(2, "b"), make)
    posted: list[str] = []
    group = s.take_subject(posted)
    assert [i.position for i in group] == [1]
    s.read(row(3, "a"), make)  # read while a's group runs
    assert posted == ["a"]
    assert [i.position for i in s.take_more(len(group), posted)] == [3]
    assert [i.position for i in s.take_more(2, posted)] == [2]
    # Once released, a subject's later events are no longer posted to that group.
    s.release(group)
    s.read(row(4, "a"), make)
    assert posted == []


def test_a_group_grows_in_steps_of_several_short_subjects_up_to_its_fair_share() -> None:
    s = scheduler(workers=1, max_group=50)
    for position in range(1, 21):  # 20 subjects of one event each
        s.read(row(position, f"s{position}"), make)
    posted: list[str] = []
    group = s.take_subject(posted)
    step = s.take_more(len(group), posted)
    assert len(step) == 8  # one call for several short subjects, not one each
    s = scheduler(workers=2, max_group=50)
    for position, subject in enumerate("abcd", start=1):
        s.read(row(position, subject), make)
    posted = []
    group = s.take_subject(posted)
    group += s.take_more(len(group), posted)
    assert len(group) == 2  # 4 events, 2 workers
    assert s.take_more(len(group), posted) == []


def test_a_head_that_must_run_alone_does_not_join_a_group() -> None:
    # Here an event to dead-letter.
    s = scheduler(workers=1, max_group=50)
    s.read(row(1, "b"), make)
    [b] = s.take_subject()
    s.dead_letter(b, {"reason": "undecodable"})
    s.release([b])
    s.read(row(2, "a"), make)
    s.read(row(3, "a"), make)
    posted: list[str] = []
    group = s.take_subject(posted)
    assert [i.position for i in group] == [2, 3]
    assert s.take_more(len(group), posted) == []
    assert [i.position for i in s.take_subject()] == [1]


def replay_of(dead_letter_id: str, position: int = 7) -> Item:
    item = make(row(position, f"\x00replay:{dead_letter_id}"))
    item.replay_of = dead_letter_id
    item.isolate = True
    return item


def run_replay(s: Scheduler, dead_letter_id: str, requested: str, outcome: Outcome) -> None:
    assert s.begin_replay(dead_letter_id, requested)
    s.add(replay_of(dead_letter_id), track=False)
    [item] = take_group(s)
    s.complete(item, outcome)
    s.release([item])


def test_a_finished_replay_request_read_again_is_refused() -> None:
    # A read that found the request pending before its outcome committed, answered
    # after: the handler must not run a second time.
    for outcome in (Outcome.REPLAYED, Outcome.REPLAY_FAILED, Outcome.DONE_ELSEWHERE):
        s = scheduler()
        run_replay(s, "dlq_1", "t1", outcome)
        assert s.idle
        assert not s.begin_replay("dlq_1", "t1"), outcome
        assert take_group(s) == []


def test_a_new_request_of_a_dead_letter_whose_replay_failed_runs() -> None:
    s = scheduler()
    run_replay(s, "dlq_1", "t1", Outcome.REPLAY_FAILED)
    # The operator asks again: the row is pending with a later request time.
    run_replay(s, "dlq_1", "t2", Outcome.REPLAYED)
    assert not s.begin_replay("dlq_1", "t2")
    assert s.begin_replay("dlq_2", "t1")  # other dead letters are not concerned


def test_a_replay_whose_outcome_was_not_recorded_is_run_again_for_the_same_request() -> None:
    s = scheduler()
    assert s.begin_replay("dlq_1", "t1")
    s.add(replay_of("dlq_1"), track=False)
    [item] = take_group(s)
    s.end_replay("dlq_1", recorded=False)  # the failure could not be stored: still pending
    s.complete(item, Outcome.REPLAY_FAILED)
    s.release([item])
    assert s.idle
    assert s.begin_replay("dlq_1", "t1")


def test_a_replay_in_flight_is_claimed_once_whatever_the_request() -> None:
    s = scheduler()
    assert s.begin_replay("dlq_1", "t1")
    assert not s.begin_replay("dlq_1", "t1")
    assert not s.begin_replay("dlq_1", "t2")
    assert not s.idle


def test_a_replay_found_finished_elsewhere_leaves_cursors_and_events_alone() -> None:
    s = scheduler()
    assert s.begin_replay("dlq_1", "t1")
    replay = replay_of("dlq_1")
    s.add(replay, track=False)
    s.read(row(7), make)  # the same event, read as a regular one (no outcome here yet)
    s.complete(replay, Outcome.DONE_ELSEWHERE)
    assert 7 in s.inflight
    assert s.marks.moved() == {}
    assert not s.idle
    assert not s.begin_replay("dlq_1", "t1")


def test_finished_replay_requests_are_remembered_up_to_a_bound() -> None:
    from dispatch_aio._consume._scheduler import _RECENT_LIMIT

    s = scheduler()
    for n in range(_RECENT_LIMIT + 1):
        assert s.begin_replay(f"dlq_{n}", "t1")
        s.end_replay(f"dlq_{n}")
    assert s.begin_replay("dlq_0", "t1")  # the oldest was let go
    assert not s.begin_replay(f"dlq_{_RECENT_LIMIT}", "t1")


def test_a_partitions_own_mark_is_below_its_first_event_without_an_outcome() -> None:
    """The mark stored for a partition handed over: below its own first event without an
    outcome, however far behind the type's mark is held by another partition; a partition
    with nothing in flight gets the type's read mark; none is above the reader's bound."""
    s = scheduler(workers=4, max_group=1)
    items = {}
    for position, subject, partition in ((1, "a", 7), (2, "b", 9), (3, "b", 9), (4, "c", 9)):
        r = row(position, subject, xid=50)
        item = items[position] = make(r)
        item.partition = partition
        s.read(r, lambda _r, it=item: it)
    s.marks.set_bound((60, 0))
    group = take_group(s)  # partition 7's event runs; 9's first subject's head too
    for other in (take_group(s), take_group(s)):
        group += other
    done = [i for i in group if i.position in (2, 4)]
    for item in done:
        s.complete(item, Outcome.HANDLED)
    s.marks.advance_all()
    assert s.marks.cursors[TYPE].committed == (50, 0)  # held by partition 7's event 1
    marks = s.marks.partition_marks(s.inflight.values(), {7, 9, 11})
    assert marks[(TYPE, 7)] == (50, 0)
    assert marks[(TYPE, 9)] == (50, 2)  # event 3 has no outcome; 2 and 4 have
    assert marks[(TYPE, 11)] == (50, 4)  # nothing here: the last row read
    s.marks.set_bound((40, 0))
    assert s.marks.partition_marks(s.inflight.values(), {9})[(TYPE, 9)] == (40, 0)
