"""What the intake decides before it queues anything, in-process: no Redis, worker or uvicorn.

The app is `create_app()` served through httpx's ASGI transport, with the state its lifespan
would make, except that the broker writer records what it is handed (or fails as told).
"""

import asyncio
import base64
import gzip
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import jwt
import orjson
import pytest

from ingest_api.app import create_app
from ingest_api.asgi import Message
from ingest_api.enqueuer import Enqueuer
from ingest_api.http_body import wait_seconds
from ingest_api.intake import Intake
from ingest_api.state import IngestState
from shared.auth import READ_SCOPE, WRITE_SCOPE, mint_token
from shared.broker.writers import QueueUnavailableError
from shared.contract.queues import ACTIVITY_QUEUE
from shared.settings import Settings
from tests.support.intake import in_process_intake
from tests.support.messages import worker_reads
from tests.support.writers import StandInWriter

EVENTS = "/api/partner/events"
BATCH = f"{EVENTS}/batch"
JSON = {"Content-Type": "application/json"}
PAGE_VIEW = {"type": "page_view", "visitorId": "v"}


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# Nothing listens there: a test that reached Redis or PostgreSQL would fail, not pass.
SETTINGS = Settings(
    redis_url=f"redis://127.0.0.1:{_closed_port()}/0",
    database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{_closed_port()}/none",
    max_wait_seconds=0,
    idempotency_ttl_seconds=2 * 3600,
    log_format="json",
)
TENANT = uuid.uuid4()


def _token(*scopes: str) -> str:
    return mint_token(SETTINGS, tenant_id=TENANT, scopes=scopes or (WRITE_SCOPE,), ttl_seconds=60)


def _expired_token() -> str:
    # mint_token refuses a lifetime that is already over: sign one by hand.
    now = int(time.time())
    claims = {"iss": "leadstream", "tid": str(TENANT), "scope": WRITE_SCOPE, "iat": now - 70}
    return jwt.encode({**claims, "exp": now - 10}, SETTINGS.jwt_secret, algorithm="HS256")


@pytest.fixture
def writer() -> StandInWriter:
    return StandInWriter()


@pytest.fixture
async def intake(writer: StandInWriter) -> AsyncIterator[Intake]:
    async with in_process_intake(SETTINGS, writer) as created:
        yield created


@pytest.fixture
async def anonymous(intake: Intake) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=intake)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as http:
        yield http


@pytest.fixture
async def http(intake: Intake) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=intake)
    headers = {"Authorization": f"Bearer {_token()}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://intake", headers=headers
    ) as client:
        yield client


def _problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"]
    assert body["type"].endswith(f"/{kind}"), body["type"]
    return body


@pytest.mark.parametrize(
    ("body", "locs"),
    [
        ({"type": 42, "personId": "01a216d8-5721-7588-8fab-fccc1ac70d60"}, [["body", "type"]]),
        ({"type": "page_view", "visitorId": "v", "pageUrll": "x"}, [["body", "pageUrll"]]),
        ({"type": "page_view"}, [["body"]]),
        ({"type": "page_view", "person": {"tags": ["x"]}}, [["body"]]),
        (
            {"type": "page_view", "person": {"emails": ["not-an-email"]}},
            [["body", "person", "emails", 0, "value"]],
        ),
        (
            {"type": "page_view", "person": {"phones": [{"value": "12"}]}},
            [["body", "person", "phones", 0, "value"]],
        ),
        (
            {"type": "page_view", "visitorId": "v", "pageDuration": -1, "occurredAt": "yesterday"},
            [["body", "pageDuration"], ["body", "occurredAt"]],
        ),
        (
            {"type": "page_view", "visitorId": "v", "company": {"website": "x"}},
            [["body", "company"]],
        ),
        ({"type": "page_view", "visitorId": "v", "message": "nul\x00byte"}, [["body"]]),
        ({"type": "", "personId": "not-a-uuid"}, [["body", "type"], ["body", "personId"]]),
    ],
)
async def test_invalid_events_name_every_wrong_field_and_queue_nothing(
    http: httpx.AsyncClient, writer: StandInWriter, body: dict[str, Any], locs: list[Any]
) -> None:
    problem = _problem(await http.post(EVENTS, json=body), 422, "validation")
    assert sorted(e["loc"] for e in problem["errors"]) == sorted(locs)
    assert writer.written == []


async def test_malformed_json_wrong_type_oversize_bodies_and_methods(
    http: httpx.AsyncClient, writer: StandInWriter
) -> None:
    malformed = await http.post(EVENTS, content=b'{"type": "page_view",', headers=JSON)
    _problem(malformed, 400, "malformed-json")

    plain = await http.post(EVENTS, content=b"{}", headers={"Content-Type": "text/plain"})
    _problem(plain, 415, "unsupported-media-type")
    assert (await http.post(EVENTS, json=PAGE_VIEW)).status_code == 202
    vendor = {"Content-Type": "application/vnd.partner+json; charset=utf-8"}
    assert (
        await http.post(EVENTS, content=b'{"type":"x","visitorId":"v"}', headers=vendor)
    ).status_code == 202

    big = {**PAGE_VIEW, "metadata": {"blob": "x" * 33_000}}
    _problem(await http.post(EVENTS, json=big), 413, "payload-too-large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the bytes received count
        yield b'{"type": "page_view", "visitorId": "v", "metadata": {"blob": "'
        for _ in range(40):
            yield b"x" * 1000
        yield b'"}}'

    _problem(await http.post(EVENTS, content=chunks(), headers=JSON), 413, "payload-too-large")

    deleting = await http.delete(EVENTS)
    assert (deleting.status_code, deleting.headers["allow"]) == (405, "GET, POST")
    assert deleting.headers["content-type"] == "application/problem+json"
    assert len(writer.written) == 2


async def test_auth_is_required_and_scoped(anonymous: httpx.AsyncClient) -> None:
    missing = _problem(await anonymous.post(EVENTS, json=PAGE_VIEW), 401, "unauthorized")
    assert missing["detail"].startswith("send Authorization")
    for header in ("Bearer x.y.z", f"Bearer {_expired_token()}", f"Basic {_token()}"):
        response = await anonymous.post(EVENTS, json=PAGE_VIEW, headers={"Authorization": header})
        _problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    reader = {"Authorization": f"Bearer {_token(READ_SCOPE)}"}
    _problem(await anonymous.post(EVENTS, json=PAGE_VIEW, headers=reader), 403, "forbidden")
    _problem(await anonymous.post(BATCH, json={"events": [PAGE_VIEW]}), 401, "unauthorized")


async def test_forged_tokens_are_refused(anonymous: httpx.AsyncClient) -> None:
    claims = {"iss": "leadstream", "tid": str(TENANT), "scope": WRITE_SCOPE, "exp": 4_102_444_800}
    wrong_key = jwt.encode(claims, "not-the-secret-not-the-secret-32b", algorithm="HS256")

    def b64(part: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()

    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    for token in (wrong_key, unsigned, _token()[:-2] + "xx"):
        response = await anonymous.post(
            EVENTS, json=PAGE_VIEW, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401, token


async def test_idempotency_key_limits(http: httpx.AsyncClient, writer: StandInWriter) -> None:
    for key in ("", "k" * 256):
        response = await http.post(EVENTS, json=PAGE_VIEW, headers={"Idempotency-Key": key})
        problem = _problem(response, 422, "validation")
        assert problem["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    keyed = await http.post(EVENTS, json=PAGE_VIEW, headers={"Idempotency-Key": "k" * 255})
    assert keyed.status_code == 202
    assert [e.idempotency_key for e in writer.written] == ["k" * 255]


def test_prefer_wait_is_parsed_and_capped() -> None:
    assert wait_seconds(None, 30) is None
    assert wait_seconds(b"respond-async", 30) is None
    assert wait_seconds(b"wait=5", 30) == 5
    assert wait_seconds(b'return=minimal, WAIT = "12"', 30) == 12
    assert wait_seconds(b"respond-async; wait=999", 30) == 30
    assert wait_seconds(b"nowait=5", 30) is None
    assert wait_seconds(b"wait=" + b"9" * 5000, 30) is None  # too many digits to be a wait


async def test_prefer_wait_is_applied_within_the_limit(
    http: httpx.AsyncClient, writer: StandInWriter
) -> None:
    # max_wait_seconds=0 here: the wait is capped to nothing, so the answer is the 202.
    response = await http.post(EVENTS, json=PAGE_VIEW, headers={"Prefer": "wait=999"})
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "wait=0"
    event_id = response.json()["id"]
    assert response.json() == {"id": event_id, "status": "queued"}
    assert response.headers["location"] == f"{EVENTS}/{event_id}"
    assert [str(e.id) for e in writer.written] == [event_id]
    assert writer.written[0].notify is True
    plain = await http.post(EVENTS, json=PAGE_VIEW)
    assert "preference-applied" not in plain.headers and writer.written[1].notify is False


async def test_a_wait_ends_as_soon_as_its_client_goes_away(
    intake: Intake, writer: StandInWriter
) -> None:
    """uvicorn does not cancel a request whose client left: the intake watches for it, so a
    wait holds nothing once nobody can hear its answer."""
    state: IngestState = intake.app.state.ingest
    state.settings = SETTINGS.model_copy(update={"max_wait_seconds": 30})
    body = orjson.dumps(PAGE_VIEW)
    gone = asyncio.Event()
    sent: list[Any] = []

    async def receive() -> Message:
        if not sent:
            sent.append("body read")
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [
        (b"authorization", f"Bearer {_token()}".encode()),
        (b"content-type", b"application/json"),
        (b"prefer", b"wait=30"),
    ]
    scope = {"type": "http", "method": "POST", "path": EVENTS, "headers": headers}
    request = asyncio.create_task(intake(scope, receive, send))
    async with asyncio.timeout(5):
        while state.waiter.waiting() == 0:  # noqa: ASYNC110 - the intake signals nothing
            await asyncio.sleep(0.01)
    assert not request.done() and [e.notify for e in writer.written] == [True]
    gone.set()
    await asyncio.wait_for(request, 5)  # not the 30 s the client asked to wait
    assert state.waiter.waiting() == 0
    assert sent == ["body read"], "nothing is sent to a client that left"


async def test_batch_lists_each_rejection_and_queues_the_rest(
    http: httpx.AsyncClient, writer: StandInWriter
) -> None:
    events = [
        {"type": "page_view", "visitorId": "batch-v1"},
        {"type": 42, "visitorId": "batch-v2"},
        {"type": "form_submission", "person": {"emails": ["Batch@Example.com"]}},
        {"type": "form_submission", "person": {"emails": ["not-an-email"]}},
        {"type": "page_view"},
    ]
    response = await http.post(BATCH, json={"events": events})
    assert response.status_code == 202
    results = response.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert [r["status"] for r in results] == [
        "queued",
        "rejected",
        "queued",
        "rejected",
        "rejected",
    ]
    assert results[1]["errors"] == [
        {
            "loc": ["body", "events", 1, "type"],
            "msg": "Input should be a valid string",
            "type": "string_type",
        }
    ]
    assert results[3]["errors"][0]["loc"] == ["body", "events", 3, "person", "emails", 0, "value"]
    assert results[4]["errors"][0]["loc"] == ["body", "events", 4]
    assert sorted(str(e.id) for e in writer.written) == sorted([results[0]["id"], results[2]["id"]])


async def test_a_body_that_is_no_batch_is_refused_whole(
    http: httpx.AsyncClient, writer: StandInWriter
) -> None:
    for body, loc in (
        ({"events": []}, ["body", "events"]),
        ({"events": [PAGE_VIEW] * 501}, ["body", "events"]),
        ({"events": {"0": PAGE_VIEW}}, ["body", "events"]),
        ([PAGE_VIEW], ["body", "events"]),
        ({"events": [PAGE_VIEW], "source": "x"}, ["body", "source"]),
    ):
        problem = _problem(await http.post(BATCH, json=body), 422, "validation")
        assert problem["errors"][0]["loc"] == loc, body

    _problem(await http.post(BATCH, content=b'{"events": [', headers=JSON), 400, "malformed-json")
    keyed = await http.post(BATCH, json={"events": [PAGE_VIEW]}, headers={"Idempotency-Key": "k"})
    assert _problem(keyed, 422, "validation")["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    plain = await http.post(BATCH, content=b"{}", headers={"Content-Type": "text/plain"})
    _problem(plain, 415, "unsupported-media-type")
    too_large = await http.post(BATCH, content=b" " * (512 * 1024 + 1), headers=JSON)
    _problem(too_large, 413, "payload-too-large")
    listing = await http.get(BATCH)
    assert (listing.status_code, listing.headers["allow"]) == (405, "POST")
    assert writer.written == []


async def test_gzip_bodies_and_their_limits(http: httpx.AsyncClient, writer: StandInWriter) -> None:
    gzipped = {**JSON, "Content-Encoding": "gzip"}
    events = [{"type": "page_view", "visitorId": f"gz-{i}"} for i in range(300)]
    body = gzip.compress(orjson.dumps({"events": events}))
    response = await http.post(BATCH, content=body, headers=gzipped)
    assert response.status_code == 202
    assert [r["status"] for r in response.json()["results"]] == ["queued"] * 300
    assert len(writer.written) == 300

    # 600 KB of JSON compresses to a few KB: the limit applies to what it decodes to.
    blob = {**PAGE_VIEW, "metadata": {"blob": "x" * 600_000}}
    bomb = gzip.compress(orjson.dumps({"events": [blob]}))
    assert len(bomb) < 32_000
    _problem(await http.post(BATCH, content=bomb, headers=gzipped), 413, "payload-too-large")

    not_gzip = await http.post(BATCH, content=b'{"events": []}', headers=gzipped)
    _problem(not_gzip, 400, "malformed-body")
    brotli = {**gzipped, "Content-Encoding": "br"}
    _problem(await http.post(BATCH, content=body, headers=brotli), 415, "unsupported-media-type")
    assert len(writer.written) == 300


async def test_a_broker_failure_is_a_503_and_a_bug_is_a_500(
    http: httpx.AsyncClient, writer: StandInWriter
) -> None:
    writer.fail = QueueUnavailableError("the queue is unavailable: ConnectionError()")
    for path, body, headers in (
        (EVENTS, PAGE_VIEW, {}),
        (EVENTS, PAGE_VIEW, {"Idempotency-Key": "k"}),
        (BATCH, {"events": [PAGE_VIEW]}, {}),
    ):
        response = await http.post(path, json=body, headers=headers)
        _problem(response, 503, "queue-unavailable")
        assert response.headers["retry-after"] == "1"

    writer.fail = ValueError("a bug in the writer")
    for path, body, headers in (
        (EVENTS, PAGE_VIEW, {}),
        (EVENTS, PAGE_VIEW, {"Idempotency-Key": "k"}),
        (BATCH, {"events": [PAGE_VIEW]}, {}),
    ):
        response = await http.post(path, json=body, headers=headers)
        assert "bug" not in _problem(response, 500, "internal").get("detail", "")


async def test_before_the_lifespan_the_api_answers_starting() -> None:
    intake = create_app(SETTINGS)
    transport = httpx.ASGITransport(app=intake)
    headers = {"Authorization": f"Bearer {_token()}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as http:
        anonymous = await http.post(EVENTS, json=PAGE_VIEW)
        _problem(anonymous, 401, "unauthorized")  # a bad token is refused all the same
        starting = await http.post(EVENTS, json=PAGE_VIEW, headers=headers)
        _problem(starting, 503, "not-ready")
        assert starting.headers["retry-after"] == "1"


async def test_the_openapi_document_states_the_configured_limits(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    post = spec["paths"][EVENTS]["post"]
    parameters = {p["name"]: p["description"] for p in post["parameters"]}
    assert set(parameters) == {"Prefer", "Idempotency-Key"}
    assert "N ≤ 0" in parameters["Prefer"]
    assert "2 h" in parameters["Idempotency-Key"]
    assert {"200", "201", "202", "400", "413", "422", "503"} <= set(post["responses"])
    assert spec["paths"][BATCH]["post"]["summary"] == "Create up to 500 events"
    assert {"EventIn", "EventBatch", "BatchResults", "Problem"} <= set(
        spec["components"]["schemas"]
    )
    assert "get" in spec["paths"][EVENTS]  # the timeline, which FastAPI serves


async def _call(
    intake: Intake, headers: dict[str, str], receive: Callable[[], Awaitable[dict[str, Any]]]
) -> tuple[int, dict[str, Any]]:
    """Drive the intake as a server would, with a receive() the test controls."""
    sent: list[dict[str, Any]] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": EVENTS,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    async with asyncio.timeout(5):
        await intake(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], orjson.loads(body)


async def test_an_anonymous_body_is_never_read(intake: Intake) -> None:
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        await asyncio.Event().wait()  # a sender that never finishes its body
        raise AssertionError

    status, problem = await _call(intake, {"Content-Type": "application/json"}, receive)
    assert (status, problem["status"], reads) == (401, 401, 0)


async def test_a_body_that_stalls_is_answered_408_within_the_timeout(intake: Intake) -> None:
    state = intake.app.state.ingest
    state.settings = SETTINGS.model_copy(update={"body_timeout_seconds": 0.2})
    chunks = [{"type": "http.request", "body": b'{"type": "pa', "more_body": True}]

    async def receive() -> dict[str, Any]:
        if chunks:
            return chunks.pop()
        await asyncio.Event().wait()
        raise AssertionError

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {_token()}"}
    started = time.monotonic()
    status, problem = await _call(intake, headers, receive)
    assert (status, problem["type"].rsplit("/", 1)[1]) == (408, "request-timeout")
    assert time.monotonic() - started < 2


async def test_a_body_in_many_small_chunks_is_read_whole(intake: Intake) -> None:
    body = orjson.dumps({**PAGE_VIEW, "metadata": {"blob": "x" * 30_000}})
    chunks = [
        {"type": "http.request", "body": body[i : i + 10], "more_body": i + 10 < len(body)}
        for i in range(0, len(body), 10)
    ][::-1]

    async def receive() -> dict[str, Any]:
        return chunks.pop()

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {_token()}"}
    status, _ = await _call(intake, headers, receive)
    assert status == 202 and not chunks


async def test_a_batch_event_over_the_single_event_limit_is_rejected_alone(
    http: httpx.AsyncClient, writer: StandInWriter
) -> None:
    big = {**PAGE_VIEW, "metadata": {"blob": "x" * 40_000}}
    response = await http.post(BATCH, json={"events": [PAGE_VIEW, big, PAGE_VIEW]})
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["queued", "rejected", "queued"]
    assert results[1]["errors"][0]["loc"] == ["body", "events", 1]
    assert len(writer.written) == 2


async def test_503_details_name_no_internals(
    http: httpx.AsyncClient, writer: StandInWriter
) -> None:
    writer.fail = QueueUnavailableError("the queue is unavailable: ConnectionError('10.0.0.7')")
    problem = _problem(await http.post(EVENTS, json=PAGE_VIEW), 503, "queue-unavailable")
    assert "10.0.0.7" not in problem["detail"] and "Error" not in problem["detail"]


async def test_gzip_is_decoded_whole_or_refused_on_both_routes(
    http: httpx.AsyncClient, writer: StandInWriter
) -> None:
    gzipped = {**JSON, "Content-Encoding": "gzip"}
    single = gzip.compress(orjson.dumps(PAGE_VIEW))
    assert (await http.post(EVENTS, content=single, headers=gzipped)).status_code == 202
    batch = gzip.compress(orjson.dumps({"events": [PAGE_VIEW]}))
    assert (await http.post(BATCH, content=batch, headers=gzipped)).status_code == 202
    assert len(writer.written) == 2

    for path, body in ((EVENTS, single), (BATCH, batch)):
        # Whatever follows the first member would be silently dropped: refused instead.
        for tail in (b"garbage", gzip.compress(b'{"type": "page_view"}')):
            refused = _problem(
                await http.post(path, content=body + tail, headers=gzipped), 400, "malformed-body"
            )
            assert "follow" in refused["detail"]
        truncated = _problem(
            await http.post(path, content=body[:-6], headers=gzipped), 400, "malformed-body"
        )
        assert "truncated" in truncated["detail"]
        brotli = {**gzipped, "Content-Encoding": "br"}
        _problem(await http.post(path, content=body, headers=brotli), 415, "unsupported-media-type")
    # The single event's limit holds for what the body decodes to, too.
    big = gzip.compress(orjson.dumps({**PAGE_VIEW, "metadata": {"blob": "x" * 40_000}}))
    _problem(await http.post(EVENTS, content=big, headers=gzipped), 413, "payload-too-large")
    assert len(writer.written) == 2


@pytest.mark.parametrize("depth", [252, 300, 1000])
async def test_a_batch_event_nested_too_deep_is_rejected_alone(
    http: httpx.AsyncClient, writer: StandInWriter, depth: int
) -> None:
    # Written by hand: orjson refuses to write 255 levels, and json.dumps recurses as deep.
    deep = b'{"type": "page_view", "visitorId": "deep", "metadata": {"x": %s%s}}' % (
        b"[" * depth,
        b"]" * depth,
    )
    good = [orjson.dumps({"type": "page_view", "visitorId": f"v{i}"}) for i in range(3)]
    body = b'{"events": [%s]}' % b", ".join([good[0], good[1], deep, good[2]])
    response = await http.post(BATCH, content=body, headers=JSON)
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["queued", "queued", "rejected", "queued"]
    assert results[2]["errors"][0]["loc"] == ["body", "events", 2, "metadata"]
    [message] = writer.messages
    assert [e.payload["visitorId"] for e in worker_reads(message)] == ["v0", "v1", "v2"]


# Valid JSON the intake refuses alone: too big a number, floats that serialise 4x longer
# than they are sent (past the 32 KB limit), and objects kombu's decoder would read as typed.
UNQUEUEABLE = [
    b'{"type": "page_view", "visitorId": "a", "property": {"id": %d}}' % 2**64,
    b'{"type": "page_view", "visitorId": "a", "metadata": {"n": [%s]}}'
    % b",".join([b"1e15"] * 6000),
    b'{"type": "page_view", "visitorId": "a", "metadata": {"__type__": "uuid", "__value__": "x"}}',
]


@pytest.mark.parametrize("bad", UNQUEUEABLE)
async def test_one_tenants_unqueueable_event_never_fails_anothers_coalesced_with_it(
    intake: Intake, writer: StandInWriter, bad: bytes
) -> None:
    state: IngestState = intake.app.state.ingest
    # One lane, lingering until every request has arrived: B's page views share a message.
    views = 5
    state.enqueuer = Enqueuer(
        writer, timeout=0.5, linger={ACTIVITY_QUEUE: 1.0}, flush_events={ACTIVITY_QUEUE: views}
    )
    other = uuid.uuid4()
    b_token = mint_token(SETTINGS, tenant_id=other, scopes=(WRITE_SCOPE,), ttl_seconds=60)
    transport = httpx.ASGITransport(app=intake)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:

        def post(body: bytes, token: str) -> Awaitable[httpx.Response]:
            headers = {**JSON, "Authorization": f"Bearer {token}"}
            return client.post(EVENTS, content=body, headers=headers)

        a, *b = await asyncio.gather(
            post(bad, _token()),
            *(
                post(orjson.dumps({**PAGE_VIEW, "visitorId": f"b{i}"}), b_token)
                for i in range(views)
            ),
        )
    assert _problem(a, 422, "validation")
    assert [r.status_code for r in b] == [202] * views
    assert writer.writes == [(views, 0.5)]  # one coalesced write
    [message] = writer.messages
    assert {e.tenant_id for e in worker_reads(message)} == {other}
    assert sorted(str(e.id) for e in worker_reads(message)) == sorted(r.json()["id"] for r in b)


async def test_prefer_wait_is_answered_at_once_when_no_caller_may_wait(
    writer: StandInWriter,
) -> None:
    full = SETTINGS.model_copy(update={"max_wait_seconds": 30, "max_waiters_per_process": 0})
    async with in_process_intake(full, writer) as intake:
        transport = httpx.ASGITransport(app=intake)
        headers = {"Authorization": f"Bearer {_token()}", "Prefer": "wait=5"}
        async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
            started = time.monotonic()
            response = await client.post(EVENTS, json=PAGE_VIEW, headers=headers)
            elapsed = time.monotonic() - started
    assert response.status_code == 202 and elapsed < 1, elapsed
    assert "preference-applied" not in response.headers
    assert [e.notify for e in writer.written] == [False]  # the worker keeps no copy for it
