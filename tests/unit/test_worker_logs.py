"""The worker's log formats, its stats line and the event fields of a record. No database."""

from __future__ import annotations

import json
import logging
import sys

from dispatch_aio._consume import ConsumerStats
from dispatch_aio._logfields import event_fields, tagged
from dispatch_aio.cli.logs import JsonFormatter
from dispatch_aio.cli.stats import StatsLine

DSN = "postgresql://app:s3cret-pw@db/app"


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "dispatch_aio.consumer", logging.WARNING, "x.py", 1, message, args, None
    )
    for name, value in extra.items():
        setattr(record, name, value)
    return record


def test_event_fields_are_tagged_in_a_fixed_order() -> None:
    fields = event_fields("coaching", "credit.locked", "evt_1", 2, "dlq_1")
    assert tagged(fields) == (
        " [consumer=coaching event_type=credit.locked event_id=evt_1 attempt=2"
        " dead_letter_id=dlq_1]"
    )
    assert "dead_letter_id" not in event_fields("c", "t", "e", 1)
    assert tagged({}) == ""


def test_json_lines_carry_the_extra_fields_and_mask_passwords() -> None:
    fields = event_fields("coaching", "credit.locked", "evt_1", 2, "dlq_1")
    record = _record("failed against %s", DSN, **fields, reason="ValueError")
    line = JsonFormatter(DSN).format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert {k: data[k] for k in fields} == fields
    assert data["reason"] == "ValueError"
    assert (data["level"], data["logger"]) == ("WARNING", "dispatch_aio.consumer")
    assert "s3cret-pw" not in line
    assert data["time"].endswith("+00:00")


def test_json_lines_carry_the_exception() -> None:
    try:
        raise LookupError("missing")
    except LookupError:
        record = logging.LogRecord("x", logging.ERROR, "x.py", 1, "boom", None, sys.exc_info())
    data = json.loads(JsonFormatter().format(record))
    assert "LookupError: missing" in data["exception"]


def test_the_stats_line_counts_since_the_previous_one() -> None:
    before = ConsumerStats(handled=10, dead_lettered=1, retried=3)
    after = ConsumerStats(handled=130, dead_lettered=2, retried=5, replayed=1)
    line = StatsLine.between("coaching", before, after, 60.0, lag=12)
    assert line.message() == (
        "consumer coaching: 120 handled (2.0/s), 1 dead-lettered, 2 retried, 1 replayed in "
        "the last 60s; lag 12 events"
    )
    assert line.fields()["handled_per_second"] == 2.0
    unknown = StatsLine.between("coaching", after, after, 0.0, lag=None)
    assert unknown.rate == 0.0
    assert unknown.message().endswith("lag unknown")
