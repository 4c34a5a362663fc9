"""docs/API.md is what the OpenAPI document says today: it cannot drift from the code."""

from ingest_api.api_docs import TARGET, render


def test_the_committed_api_reference_is_current() -> None:
    assert TARGET.read_text() == render(), "stale: run `python -m ingest_api.api_docs`"


def test_it_documents_every_route_and_the_event_fields() -> None:
    text = render()
    for route in ("POST /api/partner/events\n", "POST /api/partner/events/batch", "GET /readyz"):
        assert f"### {route}" in text
    assert "| `visitorId` | string or null | no | ≥ 1 chars, ≤ 128 chars |" in text
