"""Ids for events, people, companies and tenants: UUIDv7, so ids sort by creation time."""

import uuid

import uuid_utils.compat


def new_id() -> uuid.UUID:
    return uuid_utils.compat.uuid7()
