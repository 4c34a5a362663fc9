"""`POST /api/partner/events` (and `/batch`): the hot routes, as plain ASGI in front of FastAPI.

Measured here (bench/, wrk -c64, one uvicorn process): a FastAPI route that only validates
`EventIn` answers ~4,600 req/s; the same validation in plain ASGI ~16,000-22,000. FastAPI's
per-request machinery (routing, dependency solving, body handling, middleware) costs three
times the whole of this route's own work, so this route does its own: body limits, auth,
validation with the same model, enqueue. Everything else (reads, health, OpenAPI) is FastAPI.
"""

import asyncio
import contextlib
import functools
import hashlib
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from typing import TypeVar
from uuid import UUID

import orjson
import structlog
from fastapi import FastAPI
from prometheus_client import Counter
from pydantic import ValidationError

from ingest_api.asgi import Receive, Scope, Send
from ingest_api.auth import TokenVerifier, admit, authenticate
from ingest_api.handoff import (
    ACCEPTED,
    BATCH_BODY_LIMIT,
    ENQUEUE_FAILURES,
    EVENT_BODY_LIMIT,
    batch_items,
    make_envelope,
    parse_json,
    plan_events,
    queue_planned,
    unavailable,
    unqueueable,
)
from ingest_api.http_body import (
    DisconnectedError,
    check_content_type,
    gunzip,
    read_body,
    send_accepted,
    wait_seconds,
)
from ingest_api.paths import BATCH_PATH, EVENTS_PATH
from ingest_api.problems import (
    ProblemError,
    not_ready,
    problem_error_response,
    problem_response,
    validation_problem,
)
from ingest_api.rate_limit import too_many_requests
from ingest_api.responses import outcome_response, queued_body
from ingest_api.sources import Door
from ingest_api.state import IngestState
from ingest_api.waiter import Waiting
from shared.auth import WRITE_SCOPE, Principal
from shared.broker.writers import Claim, QueueUnavailableError
from shared.contract.events import EventIn
from shared.contract.outcomes import (
    idempotency_key,
    idempotency_record,
    parse_idempotency_record,
    payload_fingerprint,
)
from shared.contract.queues import Envelope, queue_for

log = structlog.get_logger(__name__)

__all__ = ["EVENT_BODY_LIMIT", "Intake"]

_ALLOWED = {EVENTS_PATH: "GET, POST", BATCH_PATH: "POST"}

IDEMPOTENT_REPLAYS = Counter("leadstream_idempotent_replays_total", "Repeated Idempotency-Keys")
T = TypeVar("T")


def _check_idempotency_key(key: str | None) -> None:
    if key is not None and not 0 < len(key) <= 255:
        raise ProblemError(
            422,
            "Invalid event",
            "Idempotency-Key must be 1 to 255 characters",
            kind="validation",
            errors=[{"loc": ["header", "Idempotency-Key"], "msg": "1 to 255 characters"}],
        )


class Intake:
    """The ASGI app uvicorn serves: the POSTs here, the other doors (`ingest_api.sources`) by
    their paths, every other request to FastAPI."""

    def __init__(
        self, app: FastAPI, verifier: TokenVerifier, doors: Mapping[str, Door] | None = None
    ) -> None:
        """`doors` by path; a path that ends in / is a prefix (`/hooks/` serves /hooks/<id>)."""
        self.app, self.verifier, self.doors = app, verifier, dict(doors or {})
        self.prefixed = [(path, door) for path, door in self.doors.items() if path.endswith("/")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else None
        door = self.doors.get(path or "")
        if door is None and path is not None:
            door = next((d for prefix, d in self.prefixed if path.startswith(prefix)), None)
        if door is not None:
            await door(getattr(self.app.state, "ingest", None), scope, receive, send)
            return
        # GET on the collection is the timeline, which FastAPI serves.
        allowed = _ALLOWED.get(path or "")
        if allowed is None or (path == EVENTS_PATH and scope["method"] == "GET"):
            await self.app(scope, receive, send)
            return
        try:
            if scope["method"] != "POST":
                raise ProblemError(
                    405, "Method not allowed", f"use {allowed}", headers={"Allow": allowed}
                )
            if path == EVENTS_PATH:
                await self._create(scope, receive, send)
            else:
                await self._create_batch(scope, receive, send)
        except DisconnectedError:
            return
        except ProblemError as exc:
            await problem_error_response(exc)(scope, receive, send)
        except Exception:
            # FastAPI's error middleware does not wrap this route: answer and log here.
            log.exception("intake.error")
            await problem_response(500, "Internal server error", kind="internal")(
                scope, receive, send
            )

    async def _create(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Queue one event (202), or wait up to N seconds for Sure Send's 201/200 answer."""
        headers = dict(scope["headers"])
        # The token before the body: an anonymous sender gets nothing read, nothing buffered.
        principal, state = await self._authorize(headers)
        await _limit(state, principal, headers)
        check_content_type(headers)
        raw = await read_body(
            headers, receive, EVENT_BODY_LIMIT, state.settings.body_timeout_seconds
        )
        body = gunzip(headers, raw, EVENT_BODY_LIMIT)
        raw_key = headers.get(b"idempotency-key")
        key = raw_key.decode("latin-1") if raw_key is not None else None
        _check_idempotency_key(key)
        try:
            event = EventIn.model_validate_json(body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            raise validation_problem(errors, prefix=("body",)) from None
        wait = wait_seconds(headers.get(b"prefer"), state.settings.max_wait_seconds)
        if wait is not None and not state.waiter.has_room():
            wait = None  # this process holds as many waits as it may: answer 202 at once
        envelope = make_envelope(
            event, principal.tenant_id, datetime.now(UTC), key, notify=wait is not None
        )
        if (problem := unqueueable(envelope)) is not None:
            raise validation_problem([{**problem, "loc": ()}], prefix=("body",))
        queue = queue_for(event.type)
        waiting = state.waiter.register(envelope.id) if wait is not None else None
        owner, waiting = await self._enqueue(state, envelope, queue, key, waiting)
        extra = {"Preference-Applied": f"wait={wait}"} if wait is not None else {}
        if owner != envelope.id:
            extra["Idempotent-Replayed"] = "true"
        if wait is not None and waiting is not None:
            outcome = await _unless_disconnected(receive, state.waiter.wait(owner, waiting, wait))
            if outcome is not None:
                await outcome_response(owner, outcome, extra)(scope, receive, send)
                return
        extra["Location"] = f"{EVENTS_PATH}/{owner}"
        await send_accepted(send, queued_body(owner), extra)

    async def _create_batch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Validate each event on its own and queue the good ones together: 202 with a result
        per event, so a bad event never costs its neighbours."""
        headers = dict(scope["headers"])
        principal, state = await self._authorize(headers)
        await _limit(state, principal, headers)
        check_content_type(headers)
        raw = await read_body(
            headers, receive, BATCH_BODY_LIMIT, state.settings.body_timeout_seconds
        )
        body = gunzip(headers, raw, BATCH_BODY_LIMIT)
        if b"idempotency-key" in headers:
            # Ignoring it would let a client believe a retried batch cannot double its events.
            raise ProblemError(
                422,
                "Invalid batch",
                "Idempotency-Key is for single events; send those to deduplicate retries",
                kind="validation",
                errors=[{"loc": ["header", "Idempotency-Key"], "msg": "not supported on batches"}],
            )
        planned = await plan_events(
            batch_items(parse_json(body)), principal.tenant_id, datetime.now(UTC)
        )
        await queue_planned(state, planned)
        await send_accepted(send, orjson.dumps({"results": planned.results}), {})

    async def _authorize(self, headers: dict[bytes, bytes]) -> tuple[Principal, IngestState]:
        authorization = headers.get(b"authorization")
        principal = authenticate(
            authorization.decode("latin-1") if authorization else None, self.verifier
        )
        # Set by the lifespan; uvicorn serves no request before it, an ASGI test client might.
        state: IngestState | None = getattr(self.app.state, "ingest", None)
        if state is None:
            raise not_ready()
        return await admit(principal, state.tenants, WRITE_SCOPE), state

    async def _enqueue(
        self,
        state: IngestState,
        envelope: Envelope,
        queue: str,
        key: str | None,
        waiting: Waiting | None,
    ) -> tuple[UUID, Waiting | None]:
        """The id that answers (this event's, or the key's first) and the wait registered for it.

        The wait is registered before the enqueue, so an outcome cannot be published unheard.
        """
        claim = None
        if key is not None:
            claim = Claim(
                idempotency_key(envelope.tenant_id, key),
                idempotency_record(envelope.id, payload_fingerprint(envelope.payload)),
            )
        try:
            taken = await state.enqueuer.enqueue(envelope, queue=queue, claim=claim)
        except Exception as exc:
            if waiting is not None:
                state.waiter.unregister(envelope.id, waiting)
            if not isinstance(exc, QueueUnavailableError):
                raise  # a bug: the 500 it becomes must not pass for a busy queue
            ENQUEUE_FAILURES.inc()
            raise unavailable(exc) from None
        owner = envelope.id
        if taken is not None and claim is not None:
            owner, first_fingerprint = parse_idempotency_record(taken)
            if first_fingerprint != parse_idempotency_record(claim.record)[1]:
                if waiting is not None:
                    state.waiter.unregister(envelope.id, waiting)
                raise _key_reused()
        if owner == envelope.id:
            ACCEPTED[queue].inc()
            return owner, waiting
        IDEMPOTENT_REPLAYS.inc()
        if waiting is None:
            return owner, None
        # The key's first event answers: wait for that one instead.
        state.waiter.unregister(envelope.id, waiting)
        return owner, state.waiter.register(owner)


def _key_reused() -> ProblemError:
    # The IETF idempotency-key draft: a key reused with another payload is the client's error.
    return ProblemError(
        422,
        "Idempotency-Key reused",
        "this Idempotency-Key was used for a different event: use a new key for a new event",
        kind="idempotency-key-reused",
        errors=[{"loc": ["header", "Idempotency-Key"], "msg": "reused with a different body"}],
    )


async def _unless_disconnected(receive: Receive, waiting: Awaitable[T]) -> T:
    """What `waiting` gives, or DisconnectedError as soon as the client goes away: uvicorn does
    not cancel a request whose client left, and a wait must not outlive its caller."""
    wait = asyncio.ensure_future(waiting)
    watch = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait((wait, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (watch, wait):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task  # the wait unregisters as it ends: the registry empties now
    if wait.cancelled():
        raise DisconnectedError
    return wait.result()


async def _disconnect(receive: Receive) -> None:
    # The body has been read whole: what receive() gives next is the client going away.
    while (await receive())["type"] != "http.disconnect":
        pass


async def _limit(state: IngestState, principal: Principal, headers: dict[bytes, bytes]) -> None:
    """429 once this Bearer token is over its rate (one bucket per tenant and token)."""
    bucket = _token_bucket(principal.tenant_id, headers.get(b"authorization", b""))
    decision = await state.limiter.check(bucket)
    if not decision.allowed:
        raise too_many_requests(decision, "token")


@functools.lru_cache(maxsize=10_000)
def _token_bucket(tenant_id: UUID, authorization: bytes) -> str:
    # Named by a digest, not the token: Redis keys are visible to whoever operates Redis. A
    # client sends the same token thousands of times: hashed once.
    return f"token:{tenant_id}:{hashlib.blake2b(authorization, digest_size=12).hexdigest()}"
