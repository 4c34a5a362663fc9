"""The browser doors' pure rules: IP policy, the pixel's parameter map, filling from the request."""

from datetime import UTC, datetime
from ipaddress import ip_address
from urllib.parse import parse_qsl
from uuid import uuid4

from ingest_api.sources.browser import RequestFacts, apply_ip_policy, completion, query_params
from ingest_api.sources.pixel import event_fields
from shared.contract.events import EventIn
from shared.db.sites import Site


def _site(policy: str) -> Site:
    return Site("pk_x", uuid4(), frozenset(), policy, None, None, datetime.now(UTC), None)  # type: ignore[arg-type]


def test_ip_policies() -> None:
    v4, v6 = ip_address("203.0.113.77"), ip_address("2001:db8:1:2:3:4:5:6")
    assert apply_ip_policy(v4, "keep") == v4
    assert str(apply_ip_policy(v4, "truncate")) == "203.0.113.0"
    assert str(apply_ip_policy(v6, "truncate")) == "2001:db8:1::"
    assert str(apply_ip_policy(ip_address("::ffff:198.51.100.9"), "truncate")) == "198.51.100.0"
    assert apply_ip_policy(v4, "drop") is None
    assert apply_ip_policy(None, "keep") is None


def test_the_pixel_parameter_map() -> None:
    fields = event_fields(
        {
            "t": "listing_view",
            "u": "https://agent.example/l/1",
            "r": "https://search.example/",
            "ti": "A house",
            "d": "1500",
            "v": "visitor-1",
            "e": "a@example.com",
            "p": "+1 415 555 0100",
            "fn": "Ada",
            "ln": "Lovelace",
            "c": "Acme",
            "pid": "mls-9",
            "src": "newsletter",
            "ts": "1700000000000",
            "m.campaign": "spring",
            "cb": "123",  # a cache buster: ignored
        }
    )
    event = EventIn.model_validate(fields)
    assert event.type == "listing_view" and event.page_duration == 1500
    assert event.page_referrer == "https://search.example/" and event.page_title == "A house"
    assert event.person is not None and event.person.emails[0].value == "a@example.com"
    assert event.person.first_name == "Ada" and event.person.phones[0].value
    assert event.company is not None and event.company.name == "Acme"
    assert event.property is not None and event.property.id == "mls-9"
    assert event.occurred_at == datetime.fromtimestamp(1_700_000_000, UTC)
    assert event.metadata == {"campaign": "spring"} and event.source == "newsletter"
    assert event_fields({"v": "x"}) == {"type": "page_view", "visitorId": "x"}


def test_the_request_fills_what_the_event_does_not_say() -> None:
    facts = RequestFacts(ip_address("198.51.100.23"), "Mozilla/5.0", "https://agent.example/l/2")
    event = EventIn.model_validate({"type": "page_view", "visitorId": "v"})
    assert completion(event, _site("truncate"), facts) == {
        "pageUrl": "https://agent.example/l/2",
        "userAgent": "Mozilla/5.0",
        "ipAddress": "198.51.100.0",
    }
    said = EventIn.model_validate(
        {
            "type": "page_view",
            "visitorId": "v",
            "pageUrl": "https://agent.example/own",
            "userAgent": "own",
            "ipAddress": "192.0.2.5",
        }
    )
    # What the event says is kept, its address too, under the site's policy.
    assert completion(said, _site("keep"), facts) == {"ipAddress": "192.0.2.5"}
    assert completion(said, _site("truncate"), facts) == {"ipAddress": "192.0.2.0"}
    assert completion(said, _site("drop"), facts) == {"ipAddress": None}


def test_request_facts_keep_only_what_an_event_may_hold() -> None:
    facts = RequestFacts.of(
        {"client": ("unix-socket", 0)},
        {b"referer": b"android-app://com.example", b"user-agent": b"x" * 5000},
    )
    assert facts == RequestFacts(None, "x" * 1024, None)
    seen = RequestFacts.of({"client": ("2001:db8::1", 5000)}, {b"referer": b"https://a.example/"})
    assert seen == RequestFacts(ip_address("2001:db8::1"), None, "https://a.example/")


def test_the_pixel_reads_its_query_as_parse_qsl_would() -> None:
    for query in (
        b"k=a&v=b%20c&x=&y&m.a=1+2&%ff%fe=%00&k=z",
        b"",
        b"a=1&&b=%E2%82%AC&c=caf\xe9",
        b"t=%zz&u=a%2",
    ):
        expected = dict(parse_qsl(query.decode("latin-1"), errors="replace"))
        assert query_params(query, 64) == expected, query
    assert query_params(b"&".join([b"a=1"] * 65), 64) is None
