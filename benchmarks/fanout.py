"""Fan-out benchmark: signed POSTs over loopback to an inbox served by uvicorn in a subprocess.

    python benchmarks/fanout.py            # full run (about a minute)
    python benchmarks/fanout.py --quick    # small sizes: a smoke run, figures meaningless
    python benchmarks/fanout.py --sender-loop asyncio   # the fan-out on asyncio's loop

(a) throughput: a backlog of events drained by one endpoint's fan-out consumer into the
    inbox of a second database, from starting the fan-out to the last event's outcome
    committed on the sender; every event must then be in the receiver's table exactly
    once;
(b) latency at a steady rate (100 events/s by default): from the producer's commit
    (publish returned) to the inbox's row committed (a NOTIFY sent by a benchmark-only
    trigger on the receiver's table arrives at commit), p50/p95/p99.

One embedded PostgreSQL with fsync on holds both databases (sender and receiver); the
fan-out runs in this process, on the event loop ``--sender-loop`` picks (default auto,
as ``dispatch-aio fanout --loop``: uvloop when installed, else asyncio), the inbox in a
uvicorn subprocess of its own, on the event loop and HTTP parser uvicorn's defaults pick:
uvloop and httptools when installed, as ``uvicorn[standard]`` installs them (the bench
extra does), else asyncio and h11; both loops and the parser are printed. CPU time per
event of each process is printed with the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import _common as common
import asyncpg

from dispatch_aio import FanoutConfig, Registry, generate_secret
from dispatch_aio.cli.fanout import LOOPS, event_loop_factory, loop_name
from dispatch_aio.fanout import Fanout

EVENT_TYPE = "credit.locked"
SUBSCRIBER = "coaching"
ARRIVAL_CHANNEL = "bench_inbox_arrival"
ARRIVAL_TRIGGER = f"""
CREATE FUNCTION bench_arrival() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{ARRIVAL_CHANNEL}', NEW.event_id);
    RETURN NULL;
END $$;
CREATE TRIGGER bench_arrival AFTER INSERT ON dispatcher_event
    FOR EACH ROW EXECUTE FUNCTION bench_arrival();
"""
SCRIPT = str(Path(__file__).resolve())

try:  # CPU seconds per process: optional, the figures are printed when it is there
    import psutil
except ImportError:  # pragma: no cover
    psutil = None
GOAL_THROUGHPUT = 2000.0  # events/s
GOAL_P99_MS = 20.0


@dataclass(frozen=True)
class Settings:
    backlog: int
    latency_events: int
    rate: float
    concurrency: int
    max_group: int


# Concurrency 64: POSTs in flight at once. The inbox commits what arrives together in one
# transaction, and a commit costs PostgreSQL about as much as a few dozen rows: twice the
# requests in flight roughly halves the receiver's commits per event. Each worker holds a
# sender pool connection during its POST, so the pool is sized to match.
#
# max_group 64: the sender commits the outcomes of up to 64 events at once (a fair share
# of what is buffered, so a small backlog still spreads over every worker, and at 100
# events/s a group holds one event). The sender's commits are most of its PostgreSQL
# work: with the endpoint's default of 16, four times as many commits cost PostgreSQL
# about 60 us more CPU per event. A group that fails for one event sends its other
# events again: the inbox answers those 200 without a second row.
FULL = Settings(backlog=20_000, latency_events=3_000, rate=100.0, concurrency=64, max_group=64)
QUICK = Settings(backlog=500, latency_events=200, rate=100.0, concurrency=16, max_group=16)


class CpuMeter:
    """CPU seconds spent by this process, the inbox process and PostgreSQL, between marks.

    Wall-clock rates are noisy on a shared 2-core machine; CPU time per event of each
    process is what a change to the code moves. PostgreSQL's share is its postmaster
    and every backend alive at the marks (the pools stay open throughout).
    """

    def __init__(self, inbox_pid: int, postmaster_pid: int) -> None:
        self.inbox_pid = inbox_pid
        self.postmaster_pid = postmaster_pid
        self._marked: tuple[float, float, float] | None = None

    def _postgres(self) -> float:
        assert psutil is not None
        master = psutil.Process(self.postmaster_pid)
        total = 0.0
        for process in [master, *master.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def _now(self) -> tuple[float, float, float]:
        assert psutil is not None
        inbox = psutil.Process(self.inbox_pid).cpu_times()
        return time.process_time(), inbox.user + inbox.system, self._postgres()

    def mark(self) -> None:
        if psutil is not None:
            self._marked = self._now()

    def report(self, events: int) -> str:
        if psutil is None or self._marked is None:
            return "(install psutil for CPU time per event)"
        spent = [after - before for after, before in zip(self._now(), self._marked, strict=True)]
        per_event = [seconds / events * 1e6 for seconds in spent]
        return "CPU per event: sender {:.0f} us, inbox {:.0f} us, postgres {:.0f} us".format(
            *per_event
        )


async def postmaster_pid(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        data = await conn.fetchval("SHOW data_directory")
    finally:
        await conn.close()
    return int((Path(data) / "postmaster.pid").read_text().split()[0])


async def serve(dsn: str, secret: str) -> None:
    """The subprocess: serve the inbox, print its port, run until SIGTERM."""
    from dispatch_aio.inbox import serve_inbox

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with serve_inbox(dsn, secrets=[secret]) as service:
        # The loop and parser this process actually runs: the figures depend on them.
        loop = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
        print(f"port {service.port} {service.http_parser} {loop}", flush=True)
        await stop.wait()


def inbox_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop uvicorn's default (``loop="auto"``) runs on: uvloop when installed.

    ``serve_inbox`` serves in the running loop, so the subprocess starts that loop
    itself, as ``uvicorn app:app`` would.
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def start_inbox(dsn: str, secret: str) -> tuple[asyncio.subprocess.Process, str, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        SCRIPT,
        "--serve-inbox",
        dsn,
        secret,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
    if not line.startswith(b"port "):
        raise RuntimeError(f"the inbox did not start: {line!r}")
    _, port, parser, loop = line.decode().split()
    return process, f"http://127.0.0.1:{int(port)}/dispatch/inbox", parser, loop


def fanout_config(url: str, secret: str, settings: Settings) -> FanoutConfig:
    return FanoutConfig.from_mapping(
        {
            "endpoints": {
                SUBSCRIBER: {
                    "url": url,
                    "secrets": [secret],
                    "allow_private_network": True,  # loopback, on purpose
                    "concurrency": settings.concurrency,
                    "max_group": settings.max_group,
                    "max_connections": settings.concurrency * 2,
                    "max_keepalive_connections": settings.concurrency * 2,
                }
            }
        }
    )


async def publish(pool: asyncpg.Pool, count: int) -> None:
    dispatcher = common.dispatcher(pool)
    factory = common.PayloadFactory()
    people = common.subjects(max(1, count // 4))
    for start in range(0, count, 500):
        specs = []
        for i in range(start, min(count, start + 500)):
            subject = people[i % len(people)]
            _, payload = factory.make(EVENT_TYPE, subject)
            specs.append(
                {
                    "event_type": EVENT_TYPE,
                    "payload": json.loads(payload),
                    "subject": subject,
                    "actor": common.ACTOR,
                }
            )
        await dispatcher.publish_many(specs)  # type: ignore[arg-type]


async def throughput(
    sender: asyncpg.Pool,
    receiver_dsn: str,
    config: FanoutConfig,
    registry: Registry,
    count: int,
    cpu: CpuMeter,
) -> tuple[float, str]:
    await publish(sender, count)
    await common.settle(sender, "dispatcher_event")
    fanout = Fanout(sender, config, registry=registry)
    consumer = fanout.consumers[SUBSCRIBER]
    cpu.mark()
    started = time.perf_counter()
    async with fanout:
        finished = await common.wait_until(lambda: consumer.stats.handled >= count, within=600)
        spent = cpu.report(count)
    receiver = await asyncpg.connect(receiver_dsn)
    try:
        total, distinct = await receiver.fetchrow(
            "SELECT count(*), count(DISTINCT event_id) FROM dispatcher_event"
        )
    finally:
        await receiver.close()
    if (total, distinct) != (count, count):
        raise RuntimeError(f"receiver holds {total} rows, {distinct} distinct; expected {count}")
    return count / (finished - started), spent


async def latency(
    sender: asyncpg.Pool,
    receiver_dsn: str,
    config: FanoutConfig,
    registry: Registry,
    settings: Settings,
) -> list[float]:
    listener = await asyncpg.connect(receiver_dsn)
    await listener.execute(ARRIVAL_TRIGGER)
    arrived: dict[str, float] = {}

    def on_arrival(_conn: object, _pid: int, _channel: str, event_id: str) -> None:
        arrived[event_id] = time.perf_counter()

    await listener.add_listener(ARRIVAL_CHANNEL, on_arrival)
    dispatcher = common.dispatcher(sender)
    factory = common.PayloadFactory()
    committed: dict[str, float] = {}
    fanout = Fanout(sender, config, registry=registry)
    try:
        async with fanout:
            interval = 1.0 / settings.rate
            next_at = time.perf_counter()
            for subject in common.subjects(settings.latency_events):
                next_at += interval
                _, payload = factory.make(EVENT_TYPE, subject)
                envelope = await dispatcher.publish(
                    EVENT_TYPE,
                    json.loads(payload),
                    subject=subject,
                    actor=common.ACTOR,
                )
                committed[envelope.event_id] = time.perf_counter()
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            await common.wait_until(lambda: len(arrived) >= len(committed), within=120)
    finally:
        await listener.close()
    return [(arrived[event_id] - at) * 1000.0 for event_id, at in committed.items()]


async def run(settings: Settings, quick: bool) -> None:
    server = common.BenchServer.start()
    inbox: asyncio.subprocess.Process | None = None
    try:
        print("== settings ==")
        print(f"  {common.machine_summary()}")
        print(f"  PostgreSQL {await server.server_version()}, fsync on")
        print(
            f"  backlog {settings.backlog} events, latency {settings.latency_events} events at "
            f"{settings.rate:g}/s, endpoint concurrency {settings.concurrency}, "
            f"max_group {settings.max_group}"
        )
        registry = Registry.load()
        secret = generate_secret()
        sender_dsn = await server.create_database("fanout_sender")
        receiver_dsn = await server.create_database("fanout_receiver")
        inbox, url, parser, inbox_loop = await start_inbox(receiver_dsn, secret)
        # uvicorn picks uvloop and httptools when they are installed (the bench extra
        # installs them, as uvicorn[standard] does): the inbox process says which it runs.
        print(f"  inbox: plain ASGI endpoint on uvicorn, {inbox_loop} loop, {parser} HTTP parser")
        sender_loop = loop_name(asyncio.get_running_loop())
        print(f"  sender: fan-out consumer in this process, {sender_loop} loop")
        config = fanout_config(url, secret, settings)
        sender = await common.open_pool(sender_dsn, settings.concurrency + 4)
        try:
            cpu = CpuMeter(inbox.pid, await postmaster_pid(receiver_dsn))
            rate, spent = await throughput(
                sender, receiver_dsn, config, registry, settings.backlog, cpu
            )
            print("== (a) throughput over loopback ==")
            print(f"  {rate:,.0f} events/s, each accepted exactly once")
            print(f"  {spent}")
            await sender.execute("TRUNCATE dispatcher_event, dispatcher_dedup, dispatcher_cursor")
            receiver = await asyncpg.connect(receiver_dsn)
            await receiver.execute("TRUNCATE dispatcher_event")
            await receiver.close()
            samples = await latency(sender, receiver_dsn, config, registry, settings)
        finally:
            await sender.close()
        p50, p95, p99 = (common.percentile(samples, p) for p in (50, 95, 99))
        print(f"== (b) latency at {settings.rate:g} events/s: commit -> inbox row committed ==")
        print(f"  p50 {p50:.1f} ms   p95 {p95:.1f} ms   p99 {p99:.1f} ms   ({len(samples)} events)")
        print("== goals ==")
        verdict = "PASS" if rate >= GOAL_THROUGHPUT else "FAIL"
        print(f"  {verdict} throughput >= {GOAL_THROUGHPUT:,.0f} events/s ({rate:,.0f})")
        verdict = "PASS" if p99 <= GOAL_P99_MS else "FAIL"
        print(f"  {verdict} p99 latency <= {GOAL_P99_MS:g} ms at 100/s ({p99:.1f} ms)")
        if quick:
            print("  (--quick: sizes too small for these figures to mean anything)")
    finally:
        if inbox is not None and inbox.returncode is None:
            inbox.send_signal(signal.SIGTERM)
            await inbox.wait()
        server.stop()


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-inbox":
        with asyncio.Runner(loop_factory=inbox_loop_factory()) as runner:
            runner.run(serve(sys.argv[2], sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--sender-loop",
        choices=LOOPS,
        default="auto",
        help="the fan-out's event loop, as dispatch-aio fanout --loop (default auto: "
        "uvloop when installed, else asyncio)",
    )
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=event_loop_factory(args.sender_loop)) as runner:
        runner.run(run(QUICK if args.quick else FULL, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
