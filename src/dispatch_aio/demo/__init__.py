"""The demo: a small but real scenario from the credit-reservation domain, end to end.

What runs (``dispatch-aio demo``, or ``await run_demo()``):

- **Revenue**, the producer, owns a ``credit_reservation`` table. A few producer tasks
  reserve credits for people's lessons, then lock, consume, forfeit or release them.
  Each step is one transaction that updates the reservation row *and* publishes the
  matching event on the same connection (transactional outbox). A couple of those
  transactions fail on purpose after publishing: their events must never appear.
- **Coaching** keeps an ``availability`` projection (one row per reservation: the
  slot is ``held``, ``booked`` or ``open``) through its handler's connection, so each
  projection write commits with the event's outcome. It runs as two workers of the same
  consumer, as two processes would: they share the subjects' partitions through leases,
  so each event is read and handled by one of them; a dedup hit (an event the other had
  already handled) happens only when a partition changes hands.
- **platform-warehouse** loads each event: a row per event written through its
  handler's connection, so a load commits with the event's outcome and a run that is
  rolled back loads nothing. It rejects three chosen events on every attempt: they are
  retried with short delays, then dead-lettered. The demo then "fixes" the handler and
  replays the dead letters; each is loaded exactly once and its row is resolved.

- **Delivery**, a second service in a process of its own with its own tables (another
  schema; another database in real life), takes every event through its **inbox**:
  Revenue's fan-out POSTs each one, signed, over loopback HTTP; the inbox inserts it
  into Delivery's event table and Delivery's consumer handles it from there. Five forged
  requests (wrong secret, stale timestamp, altered body, no or broken signature) are
  sent alongside: each must be refused (401) and write nothing. This part needs the
  ``[delivery]`` extra (which ``[embedded]`` brings); without it the demo says so.

At the end it prints a summary and checks that the projection matches Revenue's table,
that the warehouse's table holds a load of every committed event, once (read back, not
counted in memory: a handler may run more than once, a load commits once), that
rolled-back events stayed invisible, and that Delivery received and handled every event
exactly once.

The domain tables live in the dispatcher's schema here for brevity; real services keep
their own databases. With no DSN the demo starts an embedded PostgreSQL (schema
``public``); with a DSN it works in a fresh schema ``dispatch_demo_<random>``. Either is
removed at the end unless ``keep``.
"""

from .run import run_demo
from .summary import ConsumerSummary, DeadLetterSummary, DemoSummary, WarehouseSummary

__all__ = ["ConsumerSummary", "DeadLetterSummary", "DemoSummary", "WarehouseSummary", "run_demo"]
