"""The demo's domain: names, event types and the slot each reservation state means."""

from __future__ import annotations

PRODUCER = "revenue"
TENANT_ID = "tnt_demo"
ACTOR = "system:revenue"
OPERATOR = "demo:operator"
COACHING = "coaching"
WAREHOUSE = "platform-warehouse"

#: The five events of a reservation's life, all published by Revenue.
EVENT_TYPES = (
    "credit.reserved",
    "credit.locked",
    "credit.consumed",
    "credit.forfeited",
    "credit.released",
)
#: Coaching does not listen to credit.consumed: a spent slot stays booked.
COACHING_TYPES = ("credit.reserved", "credit.locked", "credit.forfeited", "credit.released")

#: Revenue's reservation state -> what Coaching's projection must say about the slot.
EXPECTED_SLOT = {
    "reserved": "held",
    "locked": "booked",
    "consumed": "booked",
    "forfeited": "open",
    "released": "open",
}

#: The second service's projection table, one row per event it handled.
FEED_TABLE = "lesson_feed"

_PRODUCERS = 4
_COACHING_WORKERS = 2
_RETRY_DELAYS = (0.05, 0.1)
_POISONED = 3
_STALL_TIMEOUT = 60.0
_RELEASE_REASONS = (
    "weather",
    "site_closure",
    "coach_unavailable_reschedule_failed",
    "customer_requested_in_window",
)
