"""Any body the contract accepts is serialised, queued, decoded by the worker and stored: never
answered 202 and then refused (a database rejection, a processing error, an undecodable message).

Bodies are generated over EventIn's keys with the edge values that broke this before: 64-bit
bounds, floats that serialise long, metadata at the depth limit, NUL characters, long and
case-folding unicode, long IPv6 scope ids, the date range's ends, placeholder ids, and objects
kombu's decoder reads as typed values.
"""

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import create_async_engine

from ingest_api.handoff import make_envelope, unqueueable
from shared.broker.wire import task_message
from shared.contract.events import EventIn
from shared.contract.queues import queue_for
from shared.settings import Settings
from tests.support.messages import worker_reads
from tests.support.tenants import make_tenant
from worker.unit_of_work import commit_batch

EXAMPLES = 200
# What an event may fail for in the worker when it names what this tenant does not hold.
BUSINESS_FAILURES = {"person-not-found", "company-not-found"}

EDGE_INTS = [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 2**31 - 1, 2**31, 10**15, 10**15 + 1]
EDGE_FLOATS = [1e15, 1e16, 1e15 + 0.5, -0.0, 5e-324, 1.7976931348623157e308, 0.1]
EDGE_TEXT = [
    "",
    "nul\x00inside",
    "\x00",
    "\ufb03" * 255,
    "\ufb03" * 86,  # 258 characters once case-folded
    "é" * 255,
    "\U0001d518" * 255,
    "\u2028\u2029\ufeff",
    "undefined",
    "null",
    "0",
    "   ",
    "[object Object]",
    "00000000-0000-0000-0000-000000000000",
]
TIMES = [
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999999Z",
    "1970-01-01T00:30:00+01:00",  # 1969 in UTC
    "2099-12-31T23:59:59.999999Z",
    "2100-01-01T00:00:00Z",
    "2099-12-31T23:30:00-01:00",  # 2100 in UTC
    "2026-11-30T12:00:00+14:00",
    "2026-11-30T12:00:00",  # naive
]
IPS = [
    "203.0.113.7",
    "::1",
    "::ffff:203.0.113.7",
    "fe80::1%eth0",
    "fe80::1%" + "x" * 40,
    "fe80:0000:0000:0000:0000:0000:0000:0001%" + "x" * 30,  # compressed: 38 characters
    "fe80::1%" + "x" * 56,  # 64 characters, the column's width
    "fe80::1%" + "x" * 57,
]
EMAILS = ["Ana@Example.com", " bo@example.org ", "undefined@example.com", "x@" + "a" * 250 + ".com"]
PHONES = ["+1 202 555 0143", "(503) 555-0100", "12", "+44 20 7946 0958", "+1 202 555 0143 ext 9"]
PLACEHOLDER_PERSON = "00000000-0000-0000-0000-000000000000"


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = {"a": value} if level % 2 else [value]
    return value


def _usually(ordinary: st.SearchStrategy[Any], *edges: Any) -> st.SearchStrategy[Any]:
    """Ordinary values nine times in ten, else one of the edge values."""
    edge = st.sampled_from(edges)
    return st.integers(0, 9).flatmap(lambda pick: edge if pick == 9 else ordinary)


text = _usually(st.text(max_size=12), *EDGE_TEXT)
long_text_edges = ["\ufb03" * 300, "é" * 1000, "\U0001d518" * 500]
number = _usually(
    st.integers(-(10**6), 10**6) | st.floats(-1e6, 1e6),
    *EDGE_INTS,
    *EDGE_FLOATS,
    float("nan"),
    float("inf"),
)
typed_objects = st.sampled_from(
    [
        {"__type__": "uuid", "__value__": "x"},
        {"__type__": "datetime", "__value__": "2020-01-01T00:00:00"},
        {"__type__": "bytes", "__value__": "aGk="},
        {"__type__": "other", "__value__": 1, "extra": True},  # not kombu's: a plain object
    ]
)
json_values = st.recursive(
    st.none() | st.booleans() | number | text | _usually(st.none(), *long_text_edges),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4) | typed_objects
    ),
    max_leaves=16,
)
metadata = st.one_of(
    st.dictionaries(st.text(max_size=12), json_values, max_size=5),
    st.integers(29, 34).map(lambda depth: {"deep": _nested(depth)}),
)
short = _usually(st.text(max_size=30), *EDGE_TEXT)
url = _usually(
    st.text(max_size=40).map(lambda path: "https://example.com/" + path),
    "/relative",
    "javascript:x",
    "HTTP://A.B",
    "",
)
quantity = _usually(st.integers(0, 10**6) | st.floats(0, 1e6), *EDGE_INTS, *EDGE_FLOATS)
when = _usually(
    st.datetimes(datetime(1970, 1, 2), datetime(2099, 12, 30), timezones=st.just(UTC)).map(
        datetime.isoformat
    ),
    *TIMES,
)
person = st.fixed_dictionaries(
    {},
    optional={
        "firstName": short,
        "lastName": short,
        "emails": st.lists(_usually(st.sampled_from(EMAILS[:2]), *EMAILS), max_size=6),
        "phones": st.lists(_usually(st.sampled_from(PHONES[:2]), *PHONES), max_size=6),
        "tags": st.lists(short, max_size=4),
        "source": short,
        "stage": short,
    },
)
company = st.fixed_dictionaries(
    {},
    optional={
        "id": st.uuids().map(str),
        "name": short,
        "website": url,
        "industry": short,
        "companySize": short,
        "description": st.text(max_size=300),
    },
)
property_ = st.fixed_dictionaries(
    {},
    optional={
        "id": _usually(short, *EDGE_INTS),
        "address": st.text(max_size=50),
        "url": url,
        "price": quantity,
        "beds": quantity,
        "baths": quantity,
        "sqft": quantity,
        "imageUrl": url,
    },
)
property_search = st.fixed_dictionaries(
    {},
    optional={
        "minPrice": quantity,
        "maxPrice": quantity,
        "beds": quantity,
        "baths": quantity,
        "location": st.text(max_size=50),
        "propertyType": short,
    },
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "personId": _usually(st.uuids().map(str), PLACEHOLDER_PERSON),
    "person": person,
    "company": company,
    "pageUrl": url,
    "pageTitle": st.text(max_size=50),
    "pageReferrer": url,
    "pageDuration": _usually(st.integers(0, 10**6), -1, 2**31 - 1, 2**31, *EDGE_INTS),
    "property": property_,
    "propertySearch": property_search,
    "message": _usually(st.text(max_size=300), "\ufb03" * 3000, "nul\x00"),
    "metadata": metadata,
    "ipAddress": _usually(st.ip_addresses().map(str), *IPS),
    "userAgent": st.text(max_size=50),
    "occurredAt": when,
    "sentAt": when,
    "source": short,
}
plausible = st.fixed_dictionaries(
    {
        "type": _usually(st.sampled_from(["page_view", "form_submission"]), "x" * 64, "x" * 65),
        "visitorId": _usually(st.uuids().map(str), *EDGE_TEXT, None),
    },
    optional=FIELDS,
)
# An ordinary event with one to three of the fields above: most of these are accepted, so
# each edge value reaches the database on its own.
focused = st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3, unique=True).flatmap(
    lambda names: st.fixed_dictionaries(
        {"type": st.just("page_view"), "visitorId": st.uuids().map(str)}
        | {name: FIELDS[name] for name in names}
    )
)
# Some bodies have one field of any JSON at all (refused or not).
bodies = st.one_of(
    focused,
    focused,
    plausible,
    st.tuples(
        plausible, st.sampled_from(sorted(EventIn.model_json_schema()["properties"]))
    ).flatmap(lambda pair: st.builds(lambda junk: {**pair[0], pair[1]: junk}, json_values)),
)


def test_every_accepted_body_is_queued_and_stored(settings: Settings) -> None:
    accepted: list[str] = []
    with asyncio.Runner() as runner:
        # An engine of this test's own loop: hypothesis calls the check synchronously.
        engine = create_async_engine(settings.database_url, pool_size=2)
        tenant = runner.run(make_tenant(engine, settings))

        async def check(body: dict[str, Any]) -> None:
            raw = json.dumps(body, ensure_ascii=False).encode()
            try:
                event = EventIn.model_validate_json(raw)
            except ValidationError:
                return  # a 422: never queued, nothing to store
            envelope = make_envelope(event, tenant.id, datetime.now(UTC), None, notify=False)
            assert unqueueable(envelope) is None
            message = task_message(queue_for(event.type), [envelope.to_wire()])
            [decoded] = worker_reads(message)
            assert decoded.payload == envelope.payload, "the worker reads another event"
            result = await commit_batch(engine, [decoded])
            outcome = result.outcomes[envelope.id]
            if outcome.status == "processed":
                assert outcome.body is not None
                assert outcome.body["event"]["id"] == str(envelope.id)
            else:
                assert outcome.status == "failed" and outcome.body is not None, outcome
                kind = outcome.body["type"].rsplit("/", 1)[-1]
                assert kind in BUSINESS_FAILURES, outcome.body
            accepted.append(outcome.status)

        @hypothesis_settings(
            max_examples=EXAMPLES,
            derandomize=True,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(bodies)
        def property_holds(body: dict[str, Any]) -> None:
            runner.run(check(body))

        try:
            property_holds()
        finally:
            runner.run(engine.dispose())
    # The property is only worth something if many examples reach the database.
    assert len(accepted) >= EXAMPLES // 4, f"only {len(accepted)} bodies were accepted"
    assert accepted.count("processed") >= EXAMPLES // 8, accepted
