"""Signed webhooks through the running stack: signatures, rotation, replays, limits, storage."""

import asyncio
import gzip
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from ingest_api.sources.webhooks import sign, signature_header
from shared.db.sources import Source, create_source, revoke_source, rotate_source
from shared.settings import Settings
from tests.support.http import accepted_count, wait_for_outcome
from tests.support.processes import WorkerProcess
from tests.support.sites import stored_events
from tests.support.tenants import Tenant

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def http(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
        yield client


async def make_source(
    engine: AsyncEngine, tenant: Tenant, *, rate: float | None = None, burst: int | None = None
) -> Source:
    async with engine.begin() as conn:
        return await create_source(
            conn,
            tenant_id=tenant.id,
            name=f"crm-{uuid.uuid4().hex[:8]}",
            rate_per_second=rate,
            rate_burst=burst,
        )


def inquiry(email: str) -> bytes:
    return orjson.dumps(
        {"type": "inquiry", "person": {"emails": [email]}, "message": "Is it still for sale?"}
    )


async def post(
    http: httpx.AsyncClient, source: Source, body: bytes, signature: str | None = None
) -> httpx.Response:
    header = signature if signature is not None else signature_header(source.secret, body)
    return await http.post(
        f"/hooks/{source.id}",
        content=body,
        headers={**JSON, "X-Leadstream-Signature": header},
    )


async def test_signed_events_and_batches_are_stored_once_even_when_delivered_twice(
    http: httpx.AsyncClient,
    worker: WorkerProcess,
    engine: AsyncEngine,
    tenant: Tenant,
    settings: Settings,
) -> None:
    source = await make_source(engine, tenant)
    single = inquiry("ann@example.com")
    header = signature_header(source.secret, single)
    first = await post(http, source, single, header)
    assert first.status_code == 202, first.text
    event_id = first.json()["id"]
    assert first.json() == {"id": event_id, "status": "queued"}

    batch = orjson.dumps(
        {
            "events": [
                orjson.loads(inquiry("bob@example.com")),
                {"type": "page_view", "visitorId": "v1", "pageUrl": "javascript:alert(1)"},
                {"type": "property_view", "visitorId": "v2", "pageUrl": "https://a.example/1"},
            ]
        }
    )
    batch_header = signature_header(source.secret, batch)
    answered = await post(http, source, batch, batch_header)
    assert answered.status_code == 202, answered.text
    results = answered.json()["results"]
    assert [r["status"] for r in results] == ["queued", "rejected", "queued"]
    assert results[1]["errors"][0]["loc"] == ["body", "events", 1, "pageUrl"]

    # The same signed requests again (a sender's retry, or a replay within the window): the
    # first delivery's ids, nothing queued again, however the header is written (the delivery
    # is what the signature covers, not the header's text).
    before = await accepted_count(http)
    t, v1 = (part.split("=")[1] for part in header.split(","))
    junk = "0" * 64
    for variant in (header, f"v1={v1.upper()},t={t}", f"t={t},v1={junk},v1={v1}"):
        again = await post(http, source, single, variant)
        assert again.status_code == 202 and again.json()["id"] == event_id, variant
        assert again.headers["idempotent-replayed"] == "true"
    batch_again = await post(http, source, batch, batch_header)
    assert batch_again.json()["results"] == results
    assert await accepted_count(http) == before

    # Redis forgot the delivery (restarted, or the marker expired): queued again, with the same
    # ids, and the worker stores nothing twice.
    redis = aioredis.Redis.from_url(settings.redis_url)
    for marker in await redis.keys(b"ls:hook:*"):
        await redis.delete(marker)
    await redis.aclose()
    forgotten = await post(http, source, batch, batch_header)
    assert forgotten.json()["results"] == results and "idempotent-replayed" not in forgotten.headers
    assert await accepted_count(http) == before + 2
    ids = [event_id, results[0]["id"], results[2]["id"]]
    reader = httpx.AsyncClient(base_url=str(http.base_url), headers=tenant.headers, timeout=30)
    async with reader:
        for queued in ids:
            outcome = await wait_for_outcome(reader, queued)
            assert outcome.status_code in {200, 201}, outcome.text
    rows = await stored_events(engine, tenant.id, 3)
    assert sorted(str(row.id) for row in rows) == sorted(ids)
    assert sorted(row.event_type for row in rows) == ["inquiry", "inquiry", "property_view"]


async def test_a_secret_rotated_out_still_names_the_same_delivery(
    http: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant
) -> None:
    # A sender signing with both secrets during an overlap; a replay keeping only the old
    # signature is the same delivery.
    source = await make_source(engine, tenant)
    async with engine.begin() as conn:
        rotated = await rotate_source(conn, source.id, overlap=timedelta(hours=1))
    assert rotated is not None
    body = inquiry("gil@example.com")
    now = int(time.time())
    old, new = sign(source.secret, now, body), sign(rotated.secret, now, body)
    first = await post(http, rotated, body, f"t={now},v1={new},v1={old}")
    assert first.status_code == 202
    only_old = await post(http, rotated, body, f"t={now},v1={old}")
    assert only_old.json()["id"] == first.json()["id"]
    assert only_old.headers["idempotent-replayed"] == "true"


async def test_gzip_is_signed_as_sent_and_bodies_are_bounded(
    http: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant
) -> None:
    source = await make_source(engine, tenant)
    plain = inquiry("hal@example.com")
    packed = gzip.compress(plain)
    gzipped = {**JSON, "Content-Encoding": "gzip"}

    async def send(body: bytes, headers: dict[str, str], signed: bytes) -> httpx.Response:
        signature = signature_header(source.secret, signed)
        return await http.post(
            f"/hooks/{source.id}",
            content=body,
            headers={**headers, "X-Leadstream-Signature": signature},
        )

    assert (await send(packed, gzipped, packed)).status_code == 202
    # Signed over the decoded body: not what was sent.
    assert (await send(packed, gzipped, plain)).status_code == 401
    bomb = gzip.compress(b"[" + b" " * (64 * 1024 * 1024) + b"]")
    assert (await send(bomb, gzipped, bomb)).status_code == 413
    too_large = b" " * (512 * 1024 + 1)
    assert (await send(too_large, JSON, too_large)).status_code == 413
    brotli = await send(plain, {**JSON, "Content-Encoding": "br"}, plain)
    assert brotli.status_code == 415


async def test_bad_signatures_get_401_and_queue_nothing(
    http: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant
) -> None:
    source = await make_source(engine, tenant)
    body = inquiry("carol@example.com")
    now = int(time.time())
    tampered = body.replace(b"still", b"STILL")
    other_secret = "whsec_" + "x" * 43
    cases = {
        "tampered body": (tampered, signature_header(source.secret, body)),
        "wrong secret": (body, signature_header(other_secret, body)),
        "stale": (body, signature_header(source.secret, body, now - 301)),
        "from the future": (body, signature_header(source.secret, body, now + 301)),
        "signed without the timestamp": (body, f"t={now},v1={sign(source.secret, 0, body)}"),
        "no v1": (body, f"t={now}"),
        "no t": (body, f"v1={sign(source.secret, now, body)}"),
        "garbage": (body, "Bearer nonsense"),
        "too long": (body, f"t={now}," + ",".join(["v1=" + "0" * 64] * 40)),
    }
    before = await accepted_count(http)
    for name, (sent, header) in cases.items():
        refused = await post(http, source, sent, header)
        assert refused.status_code == 401, name
        assert refused.headers["content-type"] == "application/problem+json", name
        assert refused.json()["type"].endswith("/unauthorized"), name
    unsigned = await http.post(f"/hooks/{source.id}", content=body, headers=JSON)
    assert unsigned.status_code == 401
    assert "X-Leadstream-Signature" in unsigned.json()["detail"]
    for path in ("/hooks/src_" + "A" * 22, "/hooks/nope", "/hooks/", f"/hooks/{source.id}/x"):
        unknown = await http.post(path, content=body, headers=JSON)
        assert unknown.status_code == 401, path
    assert await accepted_count(http) == before
    # Within the window, a valid signature passes.
    recent = signature_header(source.secret, body, now - 240)
    assert (await post(http, source, body, recent)).status_code == 202


async def test_a_rotated_secret_overlaps_its_successor_then_stops(
    http: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant
) -> None:
    overlapping = await make_source(engine, tenant)
    ended = await make_source(engine, tenant)
    async with engine.begin() as conn:
        rotated = await rotate_source(conn, overlapping.id, overlap=timedelta(hours=1))
        cut = await rotate_source(conn, ended.id, overlap=timedelta(0))
    assert rotated is not None and cut is not None
    assert rotated.secret != overlapping.secret and rotated.previous_secret == overlapping.secret
    # Both secrets verify during the overlap.
    assert (await post(http, overlapping, inquiry("dan@example.com"))).status_code == 202
    assert (await post(http, rotated, inquiry("dan2@example.com"))).status_code == 202
    # A sender switching over may sign with both: one valid v1 is enough.
    body = inquiry("dan3@example.com")
    now = int(time.time())
    unknown = sign("whsec_" + "y" * 43, now, body)
    both = f"t={now},v1={unknown},v1={sign(rotated.secret, now, body)}"
    assert (await post(http, rotated, body, both)).status_code == 202
    # Rotated with no overlap: the old secret is refused at once, the new one works.
    assert (await post(http, ended, inquiry("dan4@example.com"))).status_code == 401
    assert (await post(http, cut, inquiry("dan5@example.com"))).status_code == 202


async def test_a_secret_rotated_while_cached_works_within_a_second_and_revoked_ones_do_not(
    http: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant
) -> None:
    source = await make_source(engine, tenant)
    assert (await post(http, source, inquiry("eve@example.com"))).status_code == 202
    async with engine.begin() as conn:
        rotated = await rotate_source(conn, source.id, overlap=timedelta(hours=1))
    assert rotated is not None
    deadline = time.monotonic() + 5
    while True:
        answer = await post(http, rotated, inquiry("eve2@example.com"))
        if answer.status_code == 202 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert answer.status_code == 202, answer.text
    revoked = await make_source(engine, tenant)
    async with engine.begin() as conn:
        assert await revoke_source(conn, revoked.id)
    assert (await post(http, revoked, inquiry("eve3@example.com"))).status_code == 401


async def test_invalid_events_and_rate_limits(
    http: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant
) -> None:
    source = await make_source(engine, tenant, rate=0.01, burst=2)
    invalid = orjson.dumps({"type": "page_view", "visitorId": "v", "pageUrl": "ftp://x"})
    answer = await post(http, source, invalid)
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["loc"] == ["body", "pageUrl"]
    malformed = await post(http, source, b"{not json")
    assert malformed.status_code == 400
    # Unsigned requests do not spend the source's budget: it is checked after the signature.
    for _ in range(5):
        unsigned = await http.post(f"/hooks/{source.id}", content=b"{}", headers=JSON)
        assert unsigned.status_code == 401
    # The 422 and the 400 above took the two tokens of the burst.
    over = await post(http, source, inquiry("fay@example.com"))
    assert over.status_code == 429
    assert 1 <= int(over.headers["retry-after"]) <= 100
    assert over.headers["ratelimit-limit"] == "2"
    wrong_method = await http.get(f"/hooks/{source.id}")
    assert wrong_method.status_code == 405


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
EVENT_KEYS = ["type", "person", "visitorId", "pageUrl", "occurredAt", "metadata", "events"]
BODIES = st.one_of(
    JSON_VALUES,
    st.dictionaries(st.sampled_from(EVENT_KEYS), JSON_VALUES, max_size=5),
    st.fixed_dictionaries(
        {"events": st.lists(st.dictionaries(st.sampled_from(EVENT_KEYS), JSON_VALUES), max_size=5)}
    ),
)


async def test_any_signed_body_gets_an_answer_never_a_server_error(
    http: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant
) -> None:
    source = await make_source(engine, tenant)
    statuses: set[int] = set()

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(BODIES)
    def check(value: object) -> None:
        body = orjson.dumps(value)
        answer = asyncio.run_coroutine_threadsafe(post(http, source, body), loop).result(30)
        assert answer.status_code in {202, 400, 413, 422}, (body, answer.text)
        statuses.add(answer.status_code)

    loop = asyncio.get_running_loop()
    await asyncio.to_thread(check)
    assert 422 in statuses  # the generator reached validation, not only the signature
    odd = [
        b'{"type":"x","visitorId":"v","metadata":{"n":123456789012345678901234567890}}',
        b'{"type":"x","visitorId":"v","metadata":{"n":1e999}}',
        b'{"events":' + b"[" * 300 + b"]" * 300 + b"}",
        b'{"type":"x","visitorId":"v\\u0000"}',
        b"\xff\xfe{}",
        b"",
    ]
    for body in odd:
        answer = await post(http, source, body)
        assert answer.status_code in {202, 400, 422}, (body[:60], answer.text)


async def test_a_visitor_who_browsed_then_identified_is_one_person_with_both_views(
    http: httpx.AsyncClient, worker: WorkerProcess, engine: AsyncEngine, tenant: Tenant
) -> None:
    source = await make_source(engine, tenant)
    visitor = f"v-{uuid.uuid4().hex[:8]}"
    views = [
        {"type": "property_view", "visitorId": visitor, "pageUrl": f"https://a.example/l/{n}"}
        for n in (1, 2)
    ]
    browsed = await post(http, source, orjson.dumps({"events": views}))
    assert [r["status"] for r in browsed.json()["results"]] == ["queued", "queued"]
    await stored_events(engine, tenant.id, 2)
    lead = {"type": "inquiry", "visitorId": visitor, "person": {"emails": ["ivy@example.com"]}}
    assert (await post(http, source, orjson.dumps(lead))).status_code == 202

    async def stitched() -> set[uuid.UUID | None]:
        rows = await stored_events(engine, tenant.id, 3)
        return {row.person_id for row in rows}

    deadline = asyncio.get_running_loop().time() + 30
    while len(people := await stitched()) != 1 or None in people:
        assert asyncio.get_running_loop().time() < deadline, f"not stitched: {people}"
        await asyncio.sleep(0.1)
