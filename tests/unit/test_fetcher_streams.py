"""The fetcher's streams when partitions change hands (ADR 0006): pure bookkeeping.

Gained partitions get a catch-up stream from their stored cursor; the partitions already
read keep their place; losing the main stream's partitions makes the catch-up the main
one; a partition offered without a cursor is not read at all.
"""

from __future__ import annotations

from dispatch_aio import Registry
from dispatch_aio._consume._fetcher import Fetcher
from dispatch_aio._consume._scheduler import Scheduler
from dispatch_aio._consume.horizon import Snapshot
from dispatch_aio._consume.streams_store import StreamsStore
from dispatch_aio._storage._consumer_store import ConsumerStore

TYPES = ["credit.locked"]


def fetcher() -> Fetcher:
    return Fetcher(
        ConsumerStore("public", "c", TYPES),
        Scheduler({t: (0, 0) for t in TYPES}),
        Registry.load(),
        streams=StreamsStore("public", "c", TYPES),
        start=(0, 0),
        batch_size=10,
    )


def caught_up_at(f: Fetcher, xmax: int) -> None:
    """The main stream read everything below ``xmax`` (nothing in progress)."""
    f.stream.advance(Snapshot.of(xmax, xmax, ()), [], [], 10)


def test_a_first_gain_starts_the_main_stream_at_the_cursor() -> None:
    f = fetcher()
    assert f.partitions == frozenset()
    f.restart(frozenset({1, 2}), (5, 7))
    assert f.partitions == {1, 2}
    assert f.stream.frontier == (5, 7)
    assert f.low_water() == (5, 7)


def test_a_later_gain_reads_from_its_cursor_and_leaves_the_main_stream_alone() -> None:
    f = fetcher()
    f.restart(frozenset({1, 2}), (5, 7))
    caught_up_at(f, 900)
    f.restart(frozenset({1, 2, 3}), (40, 2))
    assert f.stream.frontier == (900, 0)  # what was held is not read again
    assert f.partitions == {1, 2, 3}
    assert f.low_water() == (40, 2)  # the stored cursors wait for the gained partition


def test_each_gain_reads_from_its_own_cursor_until_the_streams_merge() -> None:
    f = fetcher()
    f.restart(frozenset({1}), (5, 7))
    caught_up_at(f, 900)
    f.restart(frozenset({1, 2}), (40, 2))
    f.restart(frozenset({1, 2, 3}), (30, 9))
    assert f.low_water() == (30, 9)
    f.restart(frozenset({1, 2, 3, 4}), (60, 1))
    assert f.low_water() == (30, 9)
    assert f.stream.frontier == (900, 0)
    assert [r.stream.frontier for r in f._readings] == [(900, 0), (40, 2), (30, 9), (60, 1)]
    f.restart(frozenset({1, 3, 4}), None)  # 2 leaves: its catch-up goes with it
    assert f.low_water() == (30, 9)
    assert f.partitions == {1, 3, 4}


def test_gains_past_the_limit_join_the_newest_catch_up_from_the_lower_mark() -> None:
    """Past eight catch-ups a gain joins the newest, from the lower mark; what that one
    had read stays skipped (a floor at its mark), as do the gained cursors."""
    f = fetcher()
    f.restart(frozenset({0}), (1, 0))
    caught_up_at(f, 900)
    for p in range(1, 13):
        f.restart(frozenset(range(p + 1)), (100 - p, 0), {p: (100 - p, 0)})
    assert len(f._readings) == 9
    newest = f._readings[-1]
    assert newest.partitions == {8, 9, 10, 11, 12}
    assert newest.stream.frontier == (88, 0)
    assert newest.stream.floors == {8: (92, 0), 9: (91, 0), 10: (90, 0), 11: (89, 0)}
    assert f.partitions == set(range(13))


def test_losing_the_main_streams_partitions_makes_the_catch_up_the_main_stream() -> None:
    f = fetcher()
    f.restart(frozenset({1}), (5, 7))
    caught_up_at(f, 900)
    f.restart(frozenset({1, 2}), (40, 2))
    f.restart(frozenset({2}), None)
    assert f.partitions == {2}
    assert f.stream.frontier == (40, 2)
    assert f.low_water() == (40, 2)


def test_without_a_cursor_partitions_only_leave() -> None:
    f = fetcher()
    f.restart(frozenset({1, 2}), (5, 7))
    f.restart(frozenset({2, 9}), None)
    assert f.partitions == {2}  # 9 waits for the restart that brings its cursor


def test_every_partition_held_reads_without_a_filter() -> None:
    f = fetcher()
    f.restart(None, (0, 0))
    assert f.partitions is None
    f.restart(frozenset(range(128)), None)
    f.restart(None, (3, 3))
    assert f.partitions is None
    assert f.low_water() == (0, 0)  # the lower of the two streams
