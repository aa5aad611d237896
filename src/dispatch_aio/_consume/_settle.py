"""What a group's uncertain or failed commit leaves behind: settled, split, or dropped."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import asyncpg

from .._errors import LeaseLostError
from .._storage._consumer_store import ConsumerStore, DeadLetterRow
from .._telemetry import Telemetry
from ._codec import MAX_MESSAGE, storable
from ._items import Item, Outcome
from ._members import Members
from ._outcomes import Outcomes
from ._scheduler import Scheduler

__all__ = ["commit_failed", "lease_lost", "settle_doubt"]

logger = logging.getLogger("dispatch_aio.consumer")


async def settle_doubt(
    group: list[Item],
    conn: asyncpg.Connection,
    store: ConsumerStore,
    outcomes: Outcomes,
    limit: float,
) -> list[Item]:
    """The part of ``group`` still to run, after a commit whose answer was lost.

    The server may have committed it: the events whose marker is stored are finished
    with that outcome, without running their handlers again (a handler's own unique
    key would otherwise fail the event, handled already, until it is dead-lettered).
    A failure here is the connection's: the group runs again, still in doubt.
    """
    doubtful = [i for i in group if i.in_doubt and i.replay_of is None]
    replays = [i for i in group if i.in_doubt and i.replay_of is not None]
    async with asyncio.timeout(limit):
        stored = await store.outcomes_of(conn, [i.event_id for i in doubtful])
        replayed = (
            await store.replays_succeeded(conn, [i.replay_of for i in replays])  # type: ignore[misc]
            if replays
            else set()
        )
    for item in group:
        item.in_doubt = False
    if not stored and not replayed:
        return group
    for item in replays:
        if item.replay_of in replayed:
            outcomes.account(item, Outcome.REPLAYED)
    for item in doubtful:
        outcome = stored.get(item.event_id)
        if outcome is None:
            continue
        if outcome == "handled" and item.dead_letter is None:
            outcomes.account(item, Outcome.HANDLED)
        elif outcome == "dead_lettered" and item.dead_letter is not None:
            outcomes.account(item, Outcome.DEAD_LETTERED)
        else:  # finished otherwise than this run meant to: by another process
            outcomes.account(item, Outcome.DONE_ELSEWHERE)
    return [i for i in group if not i.done]


async def commit_failed(
    group: list[Item],
    exc: asyncpg.PostgresError,
    scheduler: Scheduler,
    log_extra: dict[str, Any],
) -> bool:
    """The group's outcomes could not be committed, for a reason of its own."""
    if len(group) > 1:
        # A handler swallowed a database error, or an outcome could not be written:
        # run these events one per transaction so the culprit shows itself.
        for item in group:
            item.isolate = True
        scheduler.requeue(group)
        logger.warning(
            "a group of %d events failed to commit (%s: %s); running them one by one",
            len(group),
            type(exc).__name__,
            exc,
            extra=log_extra,
        )
        return True
    [item] = group
    letter: DeadLetterRow = item.dead_letter
    if letter.error_type == "DeadLetterNotStorable":
        raise exc  # even the plainest row is refused: a bug, fail loudly
    item.dead_letter = dataclasses.replace(
        letter,
        error_type="DeadLetterNotStorable",
        error_message=storable(
            f"{letter.error_type}: {letter.error_message} (stored without its traceback: {exc})",
            MAX_MESSAGE,
        ),
        error_traceback=None,
    )
    scheduler.requeue(group)
    return True


def lease_lost(
    group: list[Item],
    exc: LeaseLostError,
    scheduler: Scheduler,
    members: Members | None,
    telemetry: Telemetry,
    consumer: str,
    log_extra: dict[str, Any],
) -> None:
    """Partitions lost under a group: drop their events, retry the rest shortly."""
    assert members is not None
    held = members.owned
    lost = [i for i in group if i.partition >= 0 and i.partition not in held]
    scheduler.forget(lost)
    # Partitions the member task has not found lost yet: wait for its look, briefly.
    for item in group:
        if item not in lost:
            scheduler.retry(item, 0.05)
    members.wake.set()
    telemetry.lease_lost(consumer, members.store.member_id)
    logger.warning(
        "a group of %d events lost its lease before commit: rolled back; %d dropped (%s)",
        len(group),
        len(lost),
        exc,
        extra=log_extra,
    )
