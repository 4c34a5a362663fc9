"""The event contract refuses, naming the field, what could not be serialised, stored or trusted."""

import json
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from shared.contract.events import MAX_CONTACTS, MAX_JSON_DEPTH, EventIn

BASE = {"type": "page_view", "visitorId": "v-1"}


def errors(body: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        EventIn.model_validate_json(json.dumps(body))
    return [(tuple(e["loc"]), e["msg"]) for e in caught.value.errors()]


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("extra", "loc"),
    [
        ({"property": {"id": 2**64}}, ("property", "id", "constrained-int")),
        ({"property": {"price": True}}, ("property", "price", "constrained-int")),
        ({"pageDuration": True}, ("pageDuration",)),
        ({"pageDuration": "10"}, ("pageDuration",)),
        ({"pageUrl": "javascript:alert(1)"}, ("pageUrl",)),
        ({"property": {"imageUrl": "data:text/html,<script>"}}, ("property", "imageUrl")),
        ({"company": {"name": "Acme", "website": "vbscript:x"}}, ("company", "website")),
        ({"occurredAt": "0001-01-01T00:00:00Z"}, ("occurredAt",)),
        ({"sentAt": "9999-12-31T00:00:00Z"}, ("sentAt",)),
        ({"visitorId": "undefined"}, ("visitorId",)),
        ({"visitorId": "null"}, ("visitorId",)),
        ({"visitorId": "0"}, ("visitorId",)),
        ({"visitorId": "   "}, ("visitorId",)),
        ({"ipAddress": "fe80::1%" + "x" * 200}, ("ipAddress",)),
        ({"company": {"name": "\ufb03" * 255}}, ("company", "name")),
        ({"metadata": {"n": 2**70}}, ("metadata",)),
        ({"metadata": nested(MAX_JSON_DEPTH + 1)}, ("metadata",)),
        ({"metadata": {"__type__": "uuid", "__value__": "x"}}, ("metadata",)),
        (
            {"metadata": {"at": [{"__type__": "datetime", "__value__": "2020-01-01"}]}},
            ("metadata",),
        ),
        (
            {"person": {"emails": [f"a{i}@example.com" for i in range(MAX_CONTACTS + 1)]}},
            ("person", "emails"),
        ),
        (
            {"person": {"phones": [f"+1 202 555 01{i:02d}" for i in range(MAX_CONTACTS + 1)]}},
            ("person", "phones"),
        ),
        ({"person": {"emails": ["undefined@example.com"]}}, ("person", "emails", 0, "value")),
        ({"person": {"externalId": "undefined"}}, ("person", "externalId")),
        ({"person": {"externalId": " NULL "}}, ("person", "externalId")),
        ({"person": {"externalId": "[object Object]"}}, ("person", "externalId")),
        ({"person": {"externalId": "0"}}, ("person", "externalId")),
        ({"person": {"externalId": "   "}}, ("person", "externalId")),
        ({"person": {"externalId": "u" * 256}}, ("person", "externalId")),
        ({"person": {"externalId": 42}}, ("person", "externalId")),
    ],
)
def test_unstorable_or_placeholder_values_are_refused_naming_the_field(
    extra: dict[str, Any], loc: tuple[str | int, ...]
) -> None:
    assert loc in [found for found, _ in errors({**BASE, **extra})]


def test_an_external_id_is_trimmed_keeps_its_case_and_is_an_identity_alone() -> None:
    event = EventIn.model_validate({"type": "identify", "person": {"externalId": " User-42 "}})
    assert event.person is not None and event.person.external_id == "User-42"
    assert event.person.has_identity()


def test_a_thousand_levels_of_metadata_are_refused_without_recursing_that_deep() -> None:
    # A walk 1000 levels deep would pass Python's default recursion limit (1000) and raise.
    body = '{"type": "x", "visitorId": "v", "metadata": {"x": ' + "[" * 1000 + "]" * 1000 + "}}"
    with pytest.raises(ValidationError) as caught:
        EventIn.model_validate(orjson.loads(body))
    assert [e["loc"] for e in caught.value.errors()] == [("metadata",)]


@pytest.mark.parametrize(
    "extra",
    [
        {"property": {"id": 2**62, "price": 500000, "baths": 2.5}},
        {"pageUrl": "https://example.com/p?q=1", "pageReferrer": "/relative/path"},
        {"company": {"name": "Acme", "website": "acme.example"}},
        {"occurredAt": "2026-11-30T12:00:00Z", "sentAt": "2026-11-30T12:00:01+01:00"},
        {"metadata": nested(MAX_JSON_DEPTH - 1)},
        {"visitorId": "0f8e-visitor"},
        {"person": {"emails": [f"a{i}@example.com" for i in range(MAX_CONTACTS)]}},
    ],
)
def test_ordinary_values_still_pass_and_serialise(extra: dict[str, Any]) -> None:
    event = EventIn.model_validate_json(json.dumps({**BASE, **extra}))
    assert orjson.loads(orjson.dumps(event.model_dump(mode="json", by_alias=True)))
