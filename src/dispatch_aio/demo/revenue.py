"""Revenue, the producer: reservations changed and published in one transaction."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from .._dispatcher import Dispatcher
from .._envelope import format_timestamp
from .._errors import DispatchError
from .._identifiers import quote_ident
from .._ids import new_id
from .domain import _POISONED, _PRODUCERS, _RELEASE_REASONS, ACTOR

# -- Revenue: the producer -----------------------------------------------------------


@dataclass(slots=True)
class _Reservation:
    credit_reservation_id: str
    person_id: str
    lesson_id: str
    credits: int
    lesson_starts_at: datetime
    state: str = "reserved"


class _SimulatedFailure(Exception):
    """A failure after publish, inside the producer's transaction: it rolls back."""


class _Revenue:
    """Publishes ``events`` committed events from a few concurrent producer tasks."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        dispatcher: Dispatcher,
        schema: str,
        *,
        events: int,
        rate: float,
        rng: random.Random,
    ) -> None:
        self.pool = pool
        self.dispatcher = dispatcher
        self.table = f"{quote_ident(schema)}.credit_reservation"
        self.events = events
        self.rate = rate
        self.rng = rng
        self.published = 0
        self.by_type: Counter[str] = Counter()
        self.rolled_back: list[str] = []
        self.poisoned: set[str] = set()
        self.reservations: list[_Reservation] = []
        self._next_slot = 0
        n_aborts = max(1, events // 100)
        self._abort_slots = {int(events * (i + 0.5) / n_aborts) for i in range(n_aborts)}
        self._poison_slots = (
            {events * (i + 1) // (_POISONED + 1) for i in range(_POISONED)}
            if events >= 4 * _POISONED
            else set()
        )
        people = max(_PRODUCERS, events // 10)
        self._people = [new_id("per") for _ in range(people)]
        self._lessons = [new_id("les") for _ in range(max(4, events // 25))]
        now = datetime.now(UTC)
        self._lesson_start = {
            lesson: (now + timedelta(days=rng.randint(1, 14), hours=rng.randint(8, 19))).replace(
                minute=0, second=0, microsecond=0
            )
            for lesson in self._lessons
        }

    async def run(self) -> None:
        """Run the producer tasks until ``events`` events are committed."""
        async with asyncio.TaskGroup() as tg:
            for i in range(_PRODUCERS):
                tg.create_task(self._produce(self._people[i::_PRODUCERS]))

    def _claim(self) -> int | None:
        if self._next_slot >= self.events:
            return None
        slot = self._next_slot
        self._next_slot += 1
        return slot

    async def _produce(self, people: list[str]) -> None:
        mine: list[_Reservation] = []
        mean_gap = _PRODUCERS / self.rate if self.rate > 0 else 0.0
        while (slot := self._claim()) is not None:
            if mean_gap:
                await asyncio.sleep(self.rng.expovariate(1 / mean_gap))
            action, reservation = self._choose(people, mine)
            if slot in self._abort_slots:
                await self._transact(action, reservation, poison=False, abort=True)
            committed = await self._transact(action, reservation, poison=slot in self._poison_slots)
            if committed and action == "reserve":
                mine.append(reservation)
                self.reservations.append(reservation)

    def _choose(self, people: list[str], mine: list[_Reservation]) -> tuple[str, _Reservation]:
        """The next step of one producer task: a new reservation or a transition."""
        rng = self.rng
        active = [r for r in mine if r.state in ("reserved", "locked")]
        if not active or (len(active) < 3 * len(people) and rng.random() < 0.4):
            lesson = rng.choice(self._lessons)
            return "reserve", _Reservation(
                credit_reservation_id=new_id("crr"),
                person_id=rng.choice(people),
                lesson_id=lesson,
                credits=rng.choice((1, 1, 1, 2)),
                lesson_starts_at=self._lesson_start[lesson],
            )
        reservation = rng.choice(active)
        if reservation.state == "reserved":
            action = rng.choices(("lock", "release"), weights=(7, 3))[0]
        else:
            action = rng.choices(("consume", "forfeit", "release"), weights=(6, 2, 2))[0]
        return action, reservation

    async def _transact(
        self, action: str, reservation: _Reservation, *, poison: bool, abort: bool = False
    ) -> bool:
        """One Revenue transaction: change the row and publish the event; True if committed."""
        stamp = format_timestamp(datetime.now(UTC))
        new_state = _NEW_STATE[action]
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    if action == "reserve":
                        await conn.execute(
                            f"INSERT INTO {self.table} (credit_reservation_id, person_id, "
                            "lesson_id, credits, state, lesson_starts_at) "
                            "VALUES ($1, $2, $3, $4, 'reserved', $5)",
                            reservation.credit_reservation_id,
                            reservation.person_id,
                            reservation.lesson_id,
                            reservation.credits,
                            reservation.lesson_starts_at,
                        )
                    else:
                        status = await conn.execute(
                            f"UPDATE {self.table} SET state = $2, updated_at = now() "
                            "WHERE credit_reservation_id = $1 AND state = $3",
                            reservation.credit_reservation_id,
                            new_state,
                            reservation.state,
                        )
                        if status != "UPDATE 1":
                            raise DispatchError(
                                f"demo bug: reservation {reservation.credit_reservation_id} "
                                f"is not {reservation.state} in Revenue's table"
                            )
                    event_type, payload = self._event(action, reservation, stamp)
                    envelope = await self.dispatcher.publish(
                        event_type, payload, subject=reservation.person_id, actor=ACTOR, conn=conn
                    )
                    if abort:
                        self.rolled_back.append(envelope.event_id)
                        raise _SimulatedFailure("the ledger write failed after publish")
                    if poison:
                        # Before commit: no consumer can see the event before this line.
                        self.poisoned.add(envelope.event_id)
            except _SimulatedFailure:
                return False
        reservation.state = new_state
        self.published += 1
        self.by_type[event_type] += 1
        return True

    def _event(self, action: str, r: _Reservation, stamp: str) -> tuple[str, dict[str, Any]]:
        base = {"credit_reservation_id": r.credit_reservation_id, "lesson_id": r.lesson_id}
        rng = self.rng
        if action == "reserve":
            return "credit.reserved", {
                **base,
                "person_id": r.person_id,
                "reserved_credits": r.credits,
                "funding_status": rng.choice(("funded", "funded", "pending_funding")),
                "lesson_starts_at": format_timestamp(r.lesson_starts_at),
                "reserved_at": stamp,
            }
        if action == "lock":
            return "credit.locked", {
                **base,
                "person_id": r.person_id,
                "locked_credits": r.credits,
                "locked_at": stamp,
            }
        if action == "consume":
            return "credit.consumed", {
                **base,
                "consumed_credits": r.credits,
                "consumed_at": stamp,
            }
        if action == "forfeit":
            return "credit.forfeited", {
                **base,
                "forfeited_credits": r.credits,
                "forfeiture_reason": rng.choice(("late_cancel", "no_show")),
                "forfeited_at": stamp,
            }
        return "credit.released", {
            **base,
            "person_id": r.person_id,
            "released_credits": r.credits,
            "released_from": r.state,
            "released_at": stamp,
            "reason_code": rng.choice(_RELEASE_REASONS),
        }


_NEW_STATE = {
    "reserve": "reserved",
    "lock": "locked",
    "consume": "consumed",
    "forfeit": "forfeited",
    "release": "released",
}
