"""Event ids: UUIDv7, so ids sort by the time the API received them."""

import uuid

import uuid_utils.compat


def new_event_id() -> uuid.UUID:
    return uuid_utils.compat.uuid7()
