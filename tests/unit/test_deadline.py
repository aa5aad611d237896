"""Handler time limits with one timer per group (``_consume._deadline``): no database."""

from __future__ import annotations

import asyncio

import pytest

from dispatch_aio._consume._deadline import HandlerDeadline

pytestmark = pytest.mark.anyio


async def never() -> None:
    await asyncio.get_running_loop().create_future()


async def quick() -> None:
    return None


async def test_a_handler_within_its_limit_returns_and_leaves_no_cancellation() -> None:
    deadline = HandlerDeadline()
    await deadline.limit(quick(), 0.01)
    deadline.close()
    await asyncio.sleep(0.03)  # past the first limit: nothing may cancel this task now
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_a_handler_past_its_limit_raises_timeout_error() -> None:
    deadline = HandlerDeadline()
    with pytest.raises(TimeoutError):
        await deadline.limit(never(), 0.01)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await deadline.limit(quick(), 0.01)  # and the object serves the next handler
    deadline.close()


async def test_a_timer_armed_for_an_earlier_handler_waits_for_the_current_one() -> None:
    loop = asyncio.get_running_loop()
    deadline = HandlerDeadline()
    await deadline.limit(quick(), 0.01)  # arms the one timer at +10 ms
    done = loop.create_future()
    loop.call_later(0.05, done.set_result, None)  # the second handler takes 50 ms

    async def slow() -> None:
        await done

    await deadline.limit(slow(), 10.0)  # its own limit is 10 s: the early timer re-arms
    deadline.close()
    assert done.done()


async def test_a_later_handler_still_times_out_after_a_re_arm() -> None:
    deadline = HandlerDeadline()
    await deadline.limit(quick(), 0.01)
    with pytest.raises(TimeoutError):
        await deadline.limit(never(), 0.05)
    deadline.close()


async def test_no_limit_means_none() -> None:
    loop = asyncio.get_running_loop()
    deadline = HandlerDeadline()
    done = loop.create_future()
    loop.call_later(0.03, done.set_result, None)

    async def wait() -> None:
        await done

    await deadline.limit(wait(), None)
    deadline.close()


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    started = asyncio.Event()

    async def run() -> None:
        deadline = HandlerDeadline()

        async def handler() -> None:
            started.set()
            await never()

        try:
            await deadline.limit(handler(), 10.0)
        finally:
            deadline.close()

    task = asyncio.create_task(run())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_handler_that_swallows_the_cancellation_returns_and_the_task_goes_on() -> None:
    deadline = HandlerDeadline()
    swallowed = False

    async def stubborn() -> None:
        nonlocal swallowed
        try:
            await never()
        except asyncio.CancelledError:
            swallowed = True

    await deadline.limit(stubborn(), 0.01)
    deadline.close()
    assert swallowed
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await asyncio.sleep(0)  # no cancellation left pending for the next await


async def test_close_drops_the_timer() -> None:
    deadline = HandlerDeadline()
    await deadline.limit(quick(), 0.01)
    deadline.close()
    assert deadline._handle is None


def test_it_needs_a_task() -> None:
    with pytest.raises(RuntimeError):  # no running loop, hence no task
        HandlerDeadline()


# -- the work bell (``_consume._workers``) -------------------------------------------


async def test_the_bell_keeps_at_most_one_wake_per_worker() -> None:
    from dispatch_aio._consume._workers import WorkBell

    bell = WorkBell(2)
    assert bell.idle()
    for _ in range(1_000):  # a read that makes a thousand subjects ready
        bell.ring()
    await bell.wait()
    await bell.wait()
    assert bell.idle()  # two wakes, not a thousand
    bell.ring_all()  # stopping wakes every worker whatever is pending
    await bell.wait()
    await bell.wait()
    assert bell.idle()


async def test_a_cancelled_wait_uses_up_no_wake() -> None:
    from dispatch_aio._consume._workers import WorkBell

    bell = WorkBell(1)
    waiter = asyncio.create_task(bell.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    bell.ring()
    assert not bell.idle()
    await bell.wait()
    assert bell.idle()
