"""The clock rule: the client's occurredAt, corrected only for a clock far off, never far ahead."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.contract.responses import ClockAdjustment
from worker.matching.clock import FUTURE_LIMIT, SKEW_TOLERANCE, EventTime, event_time

RECEIVED = datetime(2026, 1, 1, 12, tzinfo=UTC)
MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
EARLY = datetime.min.replace(tzinfo=UTC)
LATE = datetime.max.replace(tzinfo=UTC)


def test_the_limits_are_five_minutes_and_one_day() -> None:
    assert (SKEW_TOLERANCE, FUTURE_LIMIT) == (5 * MINUTE, DAY)


# (occurredAt, sentAt) as sent -> the stored time and why it differs from occurredAt.
CASES: list[tuple[str, datetime | None, datetime | None, datetime, ClockAdjustment | None]] = [
    ("no occurredAt: the time of receipt", None, None, RECEIVED, None),
    ("no occurredAt, sentAt ignored", None, RECEIVED - HOUR, RECEIVED, None),
    ("no sentAt: occurredAt stands", RECEIVED - HOUR, None, RECEIVED - HOUR, None),
    (
        "a small delay is not a skew",
        RECEIVED - 10 * MINUTE,
        RECEIVED - 4 * MINUTE,
        RECEIVED - 10 * MINUTE,
        None,
    ),
    (
        "a small clock ahead is kept",
        RECEIVED - MINUTE,
        RECEIVED + 4 * MINUTE,
        RECEIVED - MINUTE,
        None,
    ),
    (
        "exactly the tolerance is kept",
        RECEIVED - 30 * MINUTE,
        RECEIVED - 5 * MINUTE,
        RECEIVED - 30 * MINUTE,
        None,
    ),
    (
        "just over the tolerance is corrected",
        RECEIVED - 30 * MINUTE,
        RECEIVED - 5 * MINUTE - timedelta(microseconds=1),
        RECEIVED - 25 * MINUTE + timedelta(microseconds=1),
        "corrected",
    ),
    (
        "a clock 2 h behind is corrected",
        RECEIVED - 2 * HOUR - 3 * MINUTE,
        RECEIVED - 2 * HOUR,
        RECEIVED - 3 * MINUTE,
        "corrected",
    ),
    (
        "a clock 2 h ahead is corrected",
        RECEIVED + 2 * HOUR - 3 * MINUTE,
        RECEIVED + 2 * HOUR,
        RECEIVED - 3 * MINUTE,
        "corrected",
    ),
    (
        "another time zone, the same instant",
        datetime(2026, 1, 1, 13, 50, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 1, 1, 14, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 1, 1, 11, 50, tzinfo=UTC),
        None,
    ),
    ("a day ahead is kept", RECEIVED + DAY, None, RECEIVED + DAY, None),
    ("3 days ahead is clamped", RECEIVED + 3 * DAY, None, RECEIVED, "clamped"),
    (
        "ahead beyond the limit once corrected: clamped",
        RECEIVED + 3 * DAY,
        RECEIVED + HOUR,
        RECEIVED,
        "clamped",
    ),
    (
        "far ahead but a clock as far ahead: corrected into the past",
        RECEIVED + 3 * DAY - MINUTE,
        RECEIVED + 3 * DAY,
        RECEIVED - MINUTE,
        "corrected",
    ),
    (
        "far in the past is kept",
        datetime(1970, 1, 1, tzinfo=UTC),
        None,
        datetime(1970, 1, 1, tzinfo=UTC),
        None,
    ),
    ("an absurd offset that overflows: the clamp still holds", LATE, EARLY, RECEIVED, "clamped"),
    ("an absurd offset into year 0: occurredAt stands", EARLY + DAY, LATE, EARLY + DAY, None),
]


@pytest.mark.parametrize(
    ("occurred_at", "sent_at", "stored", "adjustment"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_stored_time(
    occurred_at: datetime | None,
    sent_at: datetime | None,
    stored: datetime,
    adjustment: ClockAdjustment | None,
) -> None:
    found = event_time(occurred_at=occurred_at, sent_at=sent_at, received_at=RECEIVED)
    assert found == EventTime(stored, adjustment)
