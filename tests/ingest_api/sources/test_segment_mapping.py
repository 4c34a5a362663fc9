"""The Segment message → EventIn rules, without the stack."""

from typing import Any

import pytest

from ingest_api.sources.segment_mapping import (
    METADATA_BUDGET,
    event_type,
    map_message,
    snake_case,
)
from shared.contract.events import EventIn


def mapped(message: Any, default_type: str | None = None) -> dict[str, Any]:
    event = map_message(message, default_type=default_type, sent_at=None, ip_policy="keep")
    assert isinstance(event, dict), event
    EventIn.model_validate(event)  # every mapping is a valid event
    return event


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Viewed Property", "property_view"),
        ("property  SEARCH", "search"),
        ("Searched Properties", "search"),
        ("Form Submitted", "form_submission"),
        ("Saved Property", "saved_property"),
        ("Clicked CTA Button!", "clicked_cta_button"),
        ("videoPlayed", "video_played"),
        ("x" * 100, "x" * 64),
    ],
)
def test_track_names_become_types(name: str, expected: str) -> None:
    assert event_type("track", name) == expected


def test_names_with_nothing_to_keep_are_no_type() -> None:
    assert snake_case("!!!") == ""
    assert event_type("track", "!!!") is None
    assert event_type("track", None) is None
    assert event_type("frobnicate", None) is None


def test_identify_carries_the_person_and_its_traits() -> None:
    event = mapped(
        {
            "type": "identify",
            "userId": 42,
            "anonymousId": "null",  # a placeholder: dropped, the userId identifies
            "traits": {"email": "ann@example.com", "phone": "+14155550100", "name": "Ann Lee Ro"},
            "timestamp": "2026-12-01T10:00:00",
        }
    )
    assert event["type"] == "identify" and "visitorId" not in event
    assert event["person"] == {
        "externalId": "42",
        "emails": ["ann@example.com"],
        "phones": ["+14155550100"],
        "firstName": "Ann",
        "lastName": "Lee Ro",
    }
    assert event["occurredAt"] == "2026-12-01T10:00:00+00:00"  # naive means UTC
    assert event["metadata"] == {"traits": event["metadata"]["traits"]}


def test_page_group_alias_and_fallbacks() -> None:
    page = mapped(
        {
            "anonymousId": "a1",
            "properties": {"url": "javascript:alert(1)", "title": "Home"},
            "context": {"page": {"url": "https://a.example/", "referrer": "https://b.example/"}},
        },
        default_type="page",
    )
    assert (page["type"], page["pageUrl"], page["pageTitle"], page["pageReferrer"]) == (
        "page_view",
        "https://a.example/",
        "Home",
        "https://b.example/",
    )
    group = mapped({"type": "group", "userId": "u1", "groupId": "g1", "traits": {"name": "Acme"}})
    assert group["company"] == {"name": "Acme"} and "emails" not in group["person"]
    alias = mapped({"type": "alias", "previousId": "anon-1", "userId": "u1"})
    assert (alias["type"], alias["visitorId"], alias["person"]) == (
        "alias",
        "anon-1",
        {"externalId": "u1"},
    )
    assert mapped({"type": "screen", "userId": "u1"})["type"] == "screen_view"


def test_what_cannot_be_stored_is_dropped_not_the_event() -> None:
    event = mapped(
        {
            "type": "track",
            "event": "Saved Property",
            "anonymousId": "a1",
            "timestamp": "yesterday",
            "properties": {"note": "nul\x00"},
            "context": {"ip": "999.1.1.1", "big": "x" * (METADATA_BUDGET + 1)},
            "integrations": {"All": True},
        }
    )
    assert "occurredAt" not in event and "ipAddress" not in event
    assert event["metadata"] == {"event": "Saved Property", "integrations": {"All": True}}


def test_messages_that_are_no_events_say_why() -> None:
    for message in ("text", {"type": "track", "anonymousId": "a"}, {"type": 3}):
        assert isinstance(
            map_message(message, default_type=None, sent_at=None, ip_policy="keep"), str
        )
