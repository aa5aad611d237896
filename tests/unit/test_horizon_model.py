"""A model of PostgreSQL transactions against horizon.Stream: 0 lost, 0 doubled, 0 reordered.

The simulated database follows the insert trigger: a subject's lock is held until the
transaction ends (a rolled-back savepoint drops the locks it took), positions are taken
under it, rows carry the top-level id, ``out_of_order`` is set when an earlier event of
the subject has a larger id. Transactions begin, take ids early or late, publish, set and
roll back savepoints, commit and abort in random order; the consumer reads at random
times with small batches, handles ready events, flushes its cursor and crashes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from dispatch_aio._consume.horizon import Key, Snapshot, Stream


@dataclass
class Ev:
    xid: int
    position: int
    subject: str
    out_of_order: bool
    rolled_back: bool = False

    @property
    def key(self) -> Key:
        return (self.xid, self.position)


@dataclass
class Tx:
    xid: int | None = None
    state: str = "running"
    events: list[Ev] = field(default_factory=list)
    locks: set[str] = field(default_factory=set)
    savepoint: list[Ev] | None = None
    savepoint_locks: set[str] = field(default_factory=set)


class Database:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.next_xid = 1000
        self.next_position = 1
        self.txs: list[Tx] = []
        self.events: list[Ev] = []
        self.lock_owner: dict[str, Tx] = {}
        self.by_xid: dict[int, Tx] = {}
        self.by_subject: dict[str, list[Ev]] = {}

    def begin(self) -> Tx:
        tx = Tx()
        self.txs.append(tx)
        return tx

    def take_xid(self, tx: Tx) -> None:
        if tx.xid is None:
            tx.xid = self.next_xid
            self.by_xid[tx.xid] = tx
            self.next_xid += 1

    def insert(self, tx: Tx, subject: str) -> bool:
        owner = self.lock_owner.get(subject)
        if owner is not None and owner is not tx:
            return False  # would wait in the trigger
        self.take_xid(tx)
        assert tx.xid is not None
        if owner is None:
            self.lock_owner[subject] = tx
            tx.locks.add(subject)
            if tx.savepoint is not None:
                tx.savepoint_locks.add(subject)
        position = self.next_position
        self.next_position += 1
        # The trigger's fresh READ COMMITTED snapshot: committed rows and our own.
        earlier = self.by_subject.setdefault(subject, [])
        out_of_order = any(e.xid > tx.xid and self.visible(e) for e in earlier)
        event = Ev(tx.xid, position, subject, out_of_order)
        self.events.append(event)
        earlier.append(event)
        tx.events.append(event)
        if tx.savepoint is not None:
            tx.savepoint.append(event)
        return True

    def set_savepoint(self, tx: Tx) -> None:
        tx.savepoint = []
        tx.savepoint_locks = set()

    def rollback_savepoint(self, tx: Tx) -> None:
        if tx.savepoint is None:
            return
        for event in tx.savepoint:
            event.rolled_back = True
        for subject in tx.savepoint_locks:
            tx.locks.discard(subject)
            del self.lock_owner[subject]
        tx.savepoint = None
        tx.savepoint_locks = set()

    def end(self, tx: Tx, state: str) -> None:
        tx.state = state
        for subject in tx.locks:
            del self.lock_owner[subject]
        tx.locks = set()

    def running(self) -> list[Tx]:
        return [t for t in self.txs if t.state == "running"]

    def visible(self, event: Ev) -> bool:
        return not event.rolled_back and self.by_xid[event.xid].state == "committed"

    def snapshot(self) -> Snapshot:
        xip = {t.xid for t in self.running() if t.xid is not None}
        return Snapshot.of(min(xip, default=self.next_xid), self.next_xid, xip)

    def read(
        self, stream: Stream, limit: int
    ) -> tuple[Snapshot, list[Ev], list[Ev] | None, list[Ev]]:
        """consumer_fetch_streams, for one stream over every partition."""
        plan = stream.plan()
        snap = self.snapshot()
        visible = sorted((e for e in self.events if self.visible(e)), key=lambda e: e.key)
        after = dict(plan.watched)
        kind0 = [e for e in visible if e.xid in after and e.position > after[e.xid]][:limit]
        kind1: list[Ev] | None = None
        if len(kind0) < limit:
            kind1 = [e for e in visible if e.key > plan.frontier][: limit - len(kind0)]
        candidates = kind0 + (kind1 or [])
        taken = {e.position for e in candidates}
        pulled = []
        for c in candidates:
            if not c.out_of_order:
                continue
            for p in visible:
                if (
                    p.subject == c.subject
                    and p.xid > c.xid
                    and p.position < c.position
                    and p.position not in taken
                ):
                    taken.add(p.position)
                    pulled.append(p)
        return snap, kind0, kind1, pulled


class ForgetfulStream(Stream):
    """The control: reads above the horizon but does not watch the ids it passes."""

    def advance(self, *args: Any, **kwargs: Any) -> None:
        Stream.advance(self, *args, **kwargs)
        self.watched.clear()
        self.drain.clear()


class ConsumerModel:
    stream_type: type[Stream] = Stream

    def __init__(self, db: Database, rng: random.Random, limit: int) -> None:
        self.db = db
        self.rng = rng
        self.limit = limit
        self.markers: list[int] = []  # positions with an outcome, in the order handled
        self.marked: set[int] = set()
        self.stored: Key = (0, 0)
        self.restart()

    def restart(self) -> None:
        self.stream = self.stream_type(frontier=self.stored)
        self.pending: dict[int, Ev] = {}  # read, no outcome yet
        self.reads: dict[int, int] = {}  # kind 0/1 reads of each position since the start

    def read(self) -> None:
        snap, kind0, kind1, pulled = self.db.read(self.stream, self.limit)
        self.stream.advance(
            snap,
            [e.key for e in kind0],
            None if kind1 is None else [e.key for e in kind1],
            self.limit,
        )
        for event in kind0 + (kind1 or []):
            self.reads[event.position] = self.reads.get(event.position, 0) + 1
            # Re-reads do not grow with open transactions: each row once per start.
            assert self.reads[event.position] == 1, f"row {event.key} read twice"
        for event in kind0 + (kind1 or []) + pulled:
            if event.position not in self.marked:
                self.pending[event.position] = event
        self.check_cursor()

    def ready(self) -> list[Ev]:
        heads: dict[str, Ev] = {}
        for event in self.pending.values():
            head = heads.get(event.subject)
            if head is None or event.position < head.position:
                heads[event.subject] = event
        return list(heads.values())

    def handle_some(self) -> None:
        ready = self.ready()
        self.rng.shuffle(ready)
        for event in ready[: self.rng.randint(1, 4)]:
            # Reordered: every visible earlier event of the subject has its outcome.
            for other in self.db.by_subject[event.subject]:
                if other.position < event.position and self.db.visible(other):
                    assert other.position in self.marked, (
                        f"{event.key} of {event.subject} ran before {other.key}"
                    )
            assert event.position not in self.marked, f"{event.key} handled twice"
            self.marked.add(event.position)
            self.markers.append(event.position)
            del self.pending[event.position]

    def low_water(self) -> Key:
        first = min((e.key for e in self.pending.values()), default=None)
        return self.stream.low_water(first)

    def check_cursor(self) -> None:
        mark = self.low_water()
        for tx in self.db.running():
            if tx.xid is not None:
                assert mark <= (tx.xid, 0), f"cursor {mark} passes running {tx.xid}"
        for event in self.db.events:
            if event.key <= mark and self.db.visible(event):
                assert event.position in self.marked, f"cursor {mark} passes unhandled {event.key}"

    def flush(self) -> None:
        self.check_cursor()
        self.stored = max(self.stored, self.low_water())


def run(seed: int, steps: int = 400, model: type[ConsumerModel] = ConsumerModel) -> tuple[int, int]:
    rng = random.Random(seed)
    db = Database(rng)
    consumer = model(db, rng, limit=rng.choice([1, 2, 3, 5, 8]))
    subjects = [f"s{i}" for i in range(rng.randint(1, 6))]
    for _ in range(steps):
        running = db.running()
        op = rng.random()
        if op < 0.12 or not running:
            tx = db.begin()
            if rng.random() < 0.3:
                db.take_xid(tx)  # an early id: an unrelated write, or pg_current_xact_id()
        elif op < 0.45:
            tx = rng.choice(running)
            for _ in range(rng.choice([1, 1, 1, 2, 5])):  # publish or publish_many
                db.insert(tx, rng.choice(subjects))
        elif op < 0.5:
            db.set_savepoint(rng.choice(running))
        elif op < 0.53:
            db.rollback_savepoint(rng.choice(running))
        elif op < 0.65:
            tx = rng.choice(running)
            db.end(tx, "committed" if rng.random() < 0.8 else "aborted")
        elif op < 0.82:
            consumer.read()
        elif op < 0.95:
            consumer.handle_some()
        elif op < 0.98:
            consumer.flush()
        else:
            consumer.restart()  # kill -9: memory gone, markers and stored cursor stay
    for tx in db.running():
        db.end(tx, "committed")
    for _ in range(10_000):
        consumer.read()
        if not consumer.pending and consumer.stream.caught_up and not consumer.stream.watched:
            break
        consumer.handle_some()
    visible = [e.position for e in db.events if db.visible(e)]
    assert sorted(consumer.markers) == sorted(visible), "lost events"
    assert len(consumer.markers) == len(set(consumer.markers)), "doubled events"
    for subject in subjects:
        mine = [p for p in consumer.markers if db.events[p - 1].subject == subject]
        assert mine == sorted(mine), f"subject {subject} out of order"
    consumer.flush()
    assert consumer.stored == (db.next_xid, 0)
    return len(visible), sum(1 for e in db.events if e.out_of_order)


@pytest.mark.parametrize("block", range(8))
def test_random_transactions_lose_double_and_reorder_nothing(block: int) -> None:
    delivered = flagged = 0
    for seed in range(block * 25, block * 25 + 25):
        d, f = run(seed)
        delivered += d
        flagged += f
    assert delivered > 0
    assert flagged > 0


@pytest.mark.slow
@pytest.mark.parametrize("block", range(10))
def test_random_transactions_many_more_rounds(block: int) -> None:
    for seed in range(10_000 + block * 100, 10_000 + block * 100 + 100):
        run(seed, steps=600)


def test_the_model_catches_a_reader_that_does_not_watch_running_ids() -> None:
    class Forgetful(ConsumerModel):
        stream_type = ForgetfulStream

    failures = 0
    for seed in range(60):
        try:
            run(seed, model=Forgetful)
        except AssertionError:
            failures += 1
    assert failures > 0


def test_an_open_transaction_holds_back_the_cursor_not_delivery() -> None:
    rng = random.Random(1)
    db = Database(rng)
    consumer = ConsumerModel(db, rng, limit=10)
    old = db.begin()
    db.take_xid(old)
    assert old.xid is not None
    for i in range(30):
        tx = db.begin()
        db.insert(tx, f"s{i}")
        db.end(tx, "committed")
        consumer.read()
        consumer.handle_some()
    while consumer.pending:
        consumer.handle_some()
    assert len(consumer.markers) == 30
    assert consumer.low_water() == (old.xid, 0)
    assert consumer.stream.watched == {old.xid}
    db.insert(old, "s0")
    db.end(old, "committed")
    consumer.read()
    consumer.handle_some()
    assert len(consumer.markers) == 31
    assert consumer.low_water() == (db.next_xid, 0)


def test_a_full_batch_of_an_ended_transaction_drains_before_the_range() -> None:
    rng = random.Random(2)
    db = Database(rng)
    consumer = ConsumerModel(db, rng, limit=3)
    big = db.begin()
    db.take_xid(big)
    consumer.read()  # passes the open transaction: watched
    for i in range(7):
        db.insert(big, f"s{i % 2}")
    later = db.begin()
    db.insert(later, "s0")
    db.end(later, "committed")  # waits behind big's lock on s0 in reality: not taken
    db.end(big, "committed")
    consumer.read()
    assert consumer.stream.drain == {big.xid: 3}
    for _ in range(10):
        consumer.read()
        while consumer.ready():
            consumer.handle_some()
    assert len(consumer.markers) == 7 + (1 if later.events else 0)
