"""The token buckets on a real Redis: atomic under concurrency, one call per tick, fail-open;
and the partner API's 429 per token, from an API process with a small limit."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from ingest_api.rate_limit import LIMITER_FAILURES, RateLimiter
from ops.processes import free_port
from shared.settings import Settings
from tests.support.processes import start_api, stop
from tests.support.tenants import Tenant

EVENTS = "/api/partner/events"


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    created = aioredis.Redis.from_url(settings.redis_url)
    yield created
    await created.aclose()


def _bucket() -> str:
    return f"test:{uuid.uuid4().hex}"


async def test_the_burst_passes_then_the_next_request_waits_for_a_token(
    client: aioredis.Redis,
) -> None:
    limiter = RateLimiter(client, rate=0.5, burst=3, timeout=2)
    name = _bucket()
    decisions = [await limiter.check(name) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    over = decisions[-1]
    assert 0 < over.retry_after <= 2.0  # one token at 0.5/s
    assert over.headers()["Retry-After"] == str(int(-(-over.retry_after // 1)))
    assert over.headers()["RateLimit-Limit"] == "3"
    # Another bucket, and another rate for the same limiter, are their own.
    assert (await limiter.check(_bucket())).allowed
    generous = _bucket()
    assert all([(await limiter.check(generous, rate=100, burst=10)).allowed for _ in range(10)])


async def test_concurrent_checks_share_one_round_trip_and_never_overspend(
    client: aioredis.Redis,
) -> None:
    limiter = RateLimiter(client, rate=0.001, burst=5, timeout=2)
    name = _bucket()
    calls = 0
    script = limiter._script

    async def counted(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await script(**kwargs)

    limiter._script = counted  # type: ignore[assignment]  # the same call, counted
    decisions = await asyncio.gather(*(limiter.check(name) for _ in range(40)))
    assert sum(d.allowed for d in decisions) == 5
    assert sorted(d.remaining for d in decisions if d.allowed) == [0, 1, 2, 3, 4]
    assert all(d.retry_after > 0 for d in decisions if not d.allowed)
    assert calls == 1  # all 40 were checked during one tick


async def test_a_redis_that_does_not_answer_lets_requests_pass_and_is_counted() -> None:
    closed = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    limiter = RateLimiter(closed, rate=1, burst=1, timeout=0.5)
    before = LIMITER_FAILURES._value.get()
    decisions = await asyncio.gather(*(limiter.check(_bucket()) for _ in range(3)))
    assert all(d.allowed for d in decisions)
    assert LIMITER_FAILURES._value.get() - before == 3
    await closed.aclose()


async def test_rate_zero_turns_the_limiter_off_without_asking_redis() -> None:
    closed = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    limiter = RateLimiter(closed, rate=0, burst=1, timeout=0.5)
    before = LIMITER_FAILURES._value.get()
    assert all([(await limiter.check("any")).allowed for _ in range(5)])
    assert LIMITER_FAILURES._value.get() == before
    await closed.aclose()


@pytest.fixture(scope="module")
def limited_api_url(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    env = {
        **service_env,
        "LEADSTREAM_RATE_LIMIT_PER_SECOND": "0.01",
        "LEADSTREAM_RATE_LIMIT_BURST": "3",
    }
    log: Path = tmp_path_factory.mktemp("limited-api") / "api.log"
    api = start_api(env, log)
    yield api.url
    stop(api.process)


async def test_a_token_over_its_limit_gets_429_with_retry_after(
    limited_api_url: str, tenant: Tenant
) -> None:
    event = {"type": "page_view", "visitorId": "visitor-1"}
    async with httpx.AsyncClient(base_url=limited_api_url, headers=tenant.headers) as http:
        answers = [await http.post(EVENTS, json=event) for _ in range(3)]
        assert [a.status_code for a in answers] == [202, 202, 202]
        over = await http.post(EVENTS, json=event)
        batch = await http.post(f"{EVENTS}/batch", json={"events": [event]})
    for refused in (over, batch):
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["ratelimit-limit"] == "3"
        assert refused.headers["ratelimit-remaining"] == "0"


async def test_a_large_bucket_lends_tokens_but_processes_never_overspend_it(
    client: aioredis.Redis,
) -> None:
    # Two limiters on one bucket: two API processes. Burst 100 lends 5 tokens per call.
    first, second = (RateLimiter(client, rate=0.001, burst=100, timeout=2) for _ in range(2))
    calls = 0
    script = first._script

    async def counted(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await script(**kwargs)

    first._script = counted  # type: ignore[assignment]  # the same call, counted
    name = _bucket()
    assert all([(await first.check(name)).allowed for _ in range(5)])
    assert calls == 1  # four of the five took a leased token
    decisions = []
    for _ in range(80):
        decisions += [await first.check(name), await second.check(name)]
    allowed = 5 + sum(d.allowed for d in decisions)
    assert 90 <= allowed <= 100  # at most the burst; at most a lease each left unused
    assert not decisions[-1].allowed and not decisions[-2].allowed
