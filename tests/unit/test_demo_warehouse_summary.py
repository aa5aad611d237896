"""The demo warehouse's check: committed events against committed loads, and what it says."""

from __future__ import annotations

from typing import Any

from dispatch_aio.demo import WarehouseSummary


def _row(event_type: str, published: str | None, loaded: str | None, loads: int | None) -> Any:
    return {"event_type": event_type, "published": published, "loaded": loaded, "loads": loads}


def _loaded(event_id: str, event_type: str = "credit.locked", loads: int = 1) -> Any:
    return _row(event_type, event_id, event_id, loads)


def test_every_event_loaded_once_passes_and_says_nothing() -> None:
    check = WarehouseSummary.of([_loaded("e1"), _loaded("e2"), _loaded("e3", "credit.reserved")])
    assert check.ok
    assert check.problems() == ()
    assert (
        check.published_by_type
        == check.loaded_by_type
        == {
            "credit.locked": 2,
            "credit.reserved": 1,
        }
    )


def test_no_events_at_all_passes() -> None:
    assert WarehouseSummary.of([]).ok


def test_an_event_loaded_twice_is_named_and_counts_twice_in_its_type() -> None:
    check = WarehouseSummary.of([_loaded("e1"), _loaded("e2", loads=2)])
    assert not check.ok
    assert check.loaded_more_than_once == {"e2": 2}
    assert check.loaded_by_type == {"credit.locked": 3}
    assert check.problems() == (
        "loads per type differ from the committed events: credit.locked 3 loaded of 2",
        "loaded more than once: e2 2 times",
    )


def test_a_committed_event_never_loaded_is_named() -> None:
    check = WarehouseSummary.of([_loaded("e1"), _row("credit.released", "e2", None, None)])
    assert not check.ok
    assert check.missing == ("e2",)
    assert check.missing_count == 1
    assert check.problems() == (
        "loads per type differ from the committed events: credit.released 0 loaded of 1",
        "1 committed event(s) never loaded: e2",
    )


def test_a_load_of_an_event_revenue_never_committed_is_named() -> None:
    check = WarehouseSummary.of([_loaded("e1"), _row("credit.locked", None, "x9", 1)])
    assert not check.ok
    assert check.not_published == ("x9",)
    assert check.problems()[-1] == "loaded but never committed: x9"


def test_many_missing_events_are_counted_and_ten_listed() -> None:
    check = WarehouseSummary.of([_row("credit.locked", f"e{i:02}", None, None) for i in range(25)])
    assert check.missing_count == 25
    assert check.missing == tuple(f"e{i:02}" for i in range(10))
    assert check.problems()[1].startswith("25 committed event(s) never loaded: e00, e01")
    assert check.problems()[1].endswith("e09, ...")
