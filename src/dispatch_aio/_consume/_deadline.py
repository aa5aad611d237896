"""Handler time limits for the handlers one task runs one after another.

``asyncio.timeout`` around each handler schedules a timer and cancels it again: once per
event, a tenth of the consumer's own time per event in a no-op drain. Here one timer
stays armed while a group's handlers run; starting a handler only moves the deadline (an
assignment). When the timer fires early (it was set for an earlier handler) it re-arms
itself for the current handler's deadline; between handlers it does nothing.

An expired limit does what ``asyncio.timeout`` does: it cancels the task, and the
handler's await raises TimeoutError instead of CancelledError (the cancellation is taken
back, so that a cancellation from elsewhere, the consumer's shutdown, still shows).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

__all__ = ["HandlerDeadline"]


class HandlerDeadline:
    """Time limits for the handlers of one task, with one timer between them.

    Create it inside the task whose handlers it limits; :meth:`close` when done.
    """

    __slots__ = ("_cancelling", "_deadline", "_expired", "_handle", "_loop", "_task")

    def __init__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("HandlerDeadline must be created inside a task")
        self._loop = asyncio.get_running_loop()
        self._task = task
        self._deadline: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._expired = False
        self._cancelling = 0

    async def limit(self, awaitable: Awaitable[None], seconds: float | None) -> None:
        """Await ``awaitable``; TimeoutError when it takes longer than ``seconds``.

        ``None`` means no limit. A cancellation from elsewhere propagates unchanged.
        """
        if seconds is None:
            await awaitable
            return
        self.start(seconds)
        try:
            await awaitable
        except asyncio.CancelledError:
            if self.expired():
                raise TimeoutError from None
            raise
        finally:
            self.end()

    # start/expired/end are limit() taken apart, for a caller that awaits the handler
    # itself (the group runner: one coroutine less per event). Use them in that order.

    def start(self, seconds: float) -> None:
        """A handler starts now: its limit is ``seconds`` (no await: a deadline moves)."""
        loop = self._loop
        deadline = self._deadline = loop.time() + seconds
        if self._handle is None:
            self._handle = loop.call_at(deadline, self._fire)
        self._cancelling = self._task.cancelling()

    def expired(self) -> bool:
        """Called on the handler's CancelledError: True when it was this limit's.

        The cancellation is then taken back (raise TimeoutError instead); False when it
        came from elsewhere (re-raise it).
        """
        if self._expired:
            self._expired = False
            return self._task.uncancel() <= self._cancelling
        return False

    def end(self) -> None:
        """The handler ended, however it did."""
        self._deadline = None
        if self._expired:
            # The handler swallowed our cancellation and returned: take it back.
            self._expired = False
            self._task.uncancel()

    def close(self) -> None:
        """Drop the timer (the task runs no more handlers under this object)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._deadline = None

    def _fire(self) -> None:
        self._handle = None
        deadline = self._deadline
        if deadline is None:
            return  # between handlers: the next one arms a timer again
        if self._loop.time() < deadline:
            # Armed for an earlier handler: wait for the current one's deadline.
            self._handle = self._loop.call_at(deadline, self._fire)
            return
        self._expired = True
        self._task.cancel()
