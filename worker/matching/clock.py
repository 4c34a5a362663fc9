"""When an event happened, by the server's clock: the client's clock is trusted unless it is far
off, and no event is stored as happening in the far future."""

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.contract.responses import ClockAdjustment

# An offset this small between sentAt and receipt is mostly network and queueing delay, not a
# wrong clock: "correcting" it would shift events by their delay and reorder a funnel's steps.
SKEW_TOLERANCE = timedelta(minutes=5)
# No client sees the future, but a time-zone slip (at most 14 h) still orders its own events;
# further ahead is a broken clock, which left alone would head every timeline for that long.
FUTURE_LIMIT = timedelta(days=1)


@dataclass(frozen=True)
class EventTime:
    occurred_at: datetime
    # Why occurred_at is not the client's occurredAt; None when it is (or none was sent).
    adjustment: ClockAdjustment | None


def event_time(
    *, occurred_at: datetime | None, sent_at: datetime | None, received_at: datetime
) -> EventTime:
    """The event's time: occurredAt shifted by the client's clock offset (received - sentAt)
    when that exceeds SKEW_TOLERANCE, then clamped to receipt if beyond FUTURE_LIMIT."""
    if occurred_at is None:
        return EventTime(received_at, None)
    occurred = occurred_at
    adjustment: ClockAdjustment | None = None
    if sent_at is not None:
        offset = received_at - sent_at  # a difference of datetimes always fits a timedelta
        if abs(offset) > SKEW_TOLERANCE:
            # An offset beyond the calendar leaves the client's time to the clamp below.
            with contextlib.suppress(OverflowError):
                occurred, adjustment = occurred_at + offset, "corrected"
    if occurred - received_at > FUTURE_LIMIT:
        return EventTime(received_at, "clamped")
    return EventTime(occurred, adjustment)
