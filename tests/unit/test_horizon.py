"""horizon.Stream: the rules one read at a time (the model test covers them at random)."""

from __future__ import annotations

import pytest

from dispatch_aio._consume.horizon import Snapshot, Stream


def test_a_read_passing_running_ids_watches_them_and_the_cursor_stays_below() -> None:
    stream = Stream(frontier=(0, 0))
    stream.advance(Snapshot.of(10, 20, [10, 15]), [], [(11, 1), (12, 2)], limit=10)
    assert stream.frontier == (20, 0)
    assert stream.caught_up
    assert stream.watched == {10, 15}
    assert stream.low_water() == (10, 0)
    assert stream.low_water((11, 1)) == (10, 0)
    assert stream.plan().watched == ((10, 0), (15, 0))


def test_a_full_range_moves_the_frontier_to_its_last_row_only() -> None:
    stream = Stream(frontier=(0, 0))
    stream.advance(Snapshot.of(10, 20, [10, 15]), [], [(11, 1), (12, 2)], limit=2)
    assert stream.frontier == (12, 2)
    assert not stream.caught_up
    assert stream.watched == {10}  # 15 is not passed yet
    assert stream.low_water((12, 2)) == (10, 0)


def test_ended_ids_leave_the_watch_once_read() -> None:
    stream = Stream(frontier=(20, 0), watched={10, 15})
    stream.advance(Snapshot.of(15, 22, [15]), [(10, 7)], [], limit=10)
    assert stream.watched == {15}
    assert stream.low_water() == (15, 0)
    stream.advance(Snapshot.of(22, 22, []), [], [], limit=10)
    assert stream.watched == set()
    assert stream.low_water() == (22, 0)


def test_a_full_watched_part_drains_per_id_and_skips_the_range() -> None:
    stream = Stream(frontier=(20, 0), watched={10, 12, 15})
    stream.advance(Snapshot.of(12, 22, [12]), [(10, 1), (15, 2), (15, 3)], None, limit=3)
    assert stream.watched == {12, 15}
    assert stream.drain == {15: 3}
    assert stream.frontier == (20, 0)
    assert stream.plan().watched == ((12, 0), (15, 3))
    stream.advance(Snapshot.of(22, 22, []), [(12, 9), (15, 4)], [(21, 5)], limit=4)
    assert stream.watched == set()
    assert stream.drain == {}
    assert stream.frontier == (22, 0)


def test_the_mark_follows_an_ended_id_while_its_rows_are_drained() -> None:
    """An id that ended with more rows than a batch is read a batch at a time: the mark
    stands at its last row read, not below all of its rows (a hand-over's mark, and the
    stored cursor, would otherwise send the next owner back over every row of it)."""
    stream = Stream(frontier=(20, 0), watched={15})
    assert stream.low_water() == (15, 0)
    stream.advance(Snapshot.of(21, 22, [21]), [(15, 2), (15, 3)], None, limit=2)
    assert stream.drain == {15: 3}
    assert stream.low_water() == (15, 3)
    stream.advance(Snapshot.of(21, 22, [21]), [(15, 7), (15, 8)], None, limit=2)
    assert stream.low_water() == (15, 8)
    assert stream.low_water((15, 6)) == (15, 5)


def test_the_cursor_sits_just_below_the_first_unfinished_event() -> None:
    stream = Stream(frontier=(30, 0))
    assert stream.low_water((12, 5)) == (12, 4)
    assert stream.low_water(None) == (30, 0)


def test_streams_merge_only_when_caught_up_in_the_same_read() -> None:
    a, b = Stream(frontier=(0, 0)), Stream(frontier=(5, 0))
    snap = Snapshot.of(8, 9, [8])
    a.advance(snap, [], [], limit=5)
    assert not a.can_merge(b)
    with pytest.raises(ValueError, match="same read"):
        a.merge(b)
    b.advance(snap, [], [], limit=5)
    assert a.can_merge(b)
    a.merge(b)
    assert a.watched == {8}


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Stream(frontier=(0, 0)).advance(Snapshot.of(1, 1, []), [], [], limit=0)
