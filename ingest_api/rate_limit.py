"""Rate limits: token buckets in Redis, per Bearer token, site key or webhook source.

`RateLimiter.check(name, rate, burst)` answers whether one more request may pass. Each bucket
lives in Redis (so every API process shares it) and is updated by one Lua script, atomically,
with Redis' own clock. The checks made during one event-loop tick go out together, as one
script call (one round trip) for all of them, like the enqueuer coalesces its writes, and the
checks of one bucket as one entry asking for several tokens; a large bucket also lends the
process a few tokens (`LEASE_FRACTION` of its burst, for `LEASE_SECONDS`) that the next checks
take without a round trip. Under load the limiter adds a fraction of a round trip per request,
and Redis' work grows with the buckets, not the requests. The price of leasing: tokens a process
leased and did not use within the second are lost, so a client spread over many processes may be
admitted slightly less than its rate, never more.

Fail-open: if Redis does not answer within a fifth of the enqueue timeout, the request passes
(counted in `leadstream_rate_limiter_failures_total` and logged). A Redis that is down refuses
the enqueue anyway (503); one that is only slow must not turn every request into an error of
its own.
"""

import asyncio
import math
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from prometheus_client import Counter
from redis.exceptions import RedisError

from ingest_api.problems import ProblemError

log = structlog.get_logger(__name__)

RATE_LIMITED = Counter("leadstream_rate_limited_total", "Requests refused over a limit", ["kind"])
LIMITER_FAILURES = Counter(
    "leadstream_rate_limiter_failures_total", "Checks let through because Redis did not answer"
)

# KEYS[i] is a bucket; ARGV[3i-2], ARGV[3i-1], ARGV[3i] are its rate (tokens/s), burst
# (capacity) and the requests asking for a token now. A bucket is a hash {tokens, ms}: what it
# held at that Redis time. It expires once it would be full again, so idle keys cost no memory.
# Per bucket: requests granted, whole tokens left, milliseconds until the next token,
# milliseconds until full.
_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local asked = tonumber(ARGV[3 * i])
  local held = redis.call('HMGET', key, 'tokens', 'ms')
  local tokens = tonumber(held[1])
  local since = tonumber(held[2])
  if tokens == nil or since == nil then
    tokens = burst
  else
    tokens = math.min(burst, tokens + math.max(0, now - since) * rate / 1000)
  end
  local granted = math.min(asked, math.floor(tokens))
  tokens = tokens - granted
  local full = math.ceil((burst - tokens) * 1000 / rate)
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ms', now)
  redis.call('PEXPIRE', key, full + 1000)
  out[#out + 1] = granted
  out[#out + 1] = math.floor(tokens)
  out[#out + 1] = math.ceil((1 - (tokens - math.floor(tokens))) * 1000 / rate)
  out[#out + 1] = full
end
return out
"""
KEY_PREFIX = "ls:rate:"
RATE_LIMIT_HEADERS = ("Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


@dataclass(frozen=True)
class Decision:
    """One check's answer, in the terms of the IETF RateLimit header fields draft."""

    allowed: bool
    limit: int  # the burst: requests that may pass at once
    remaining: int
    retry_after: float  # seconds until one request may pass (0 when allowed)
    reset: float  # seconds until the bucket is full again

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers


def too_many_requests(decision: Decision, kind: str) -> ProblemError:
    """The 429 every door but the pixel answers over its limit."""
    RATE_LIMITED.labels(kind).inc()
    return ProblemError(
        429,
        "Too many requests",
        f"over the rate limit of this {kind}: retry after Retry-After seconds",
        kind="rate-limited",
        headers=decision.headers(),
    )


@dataclass
class _Check:
    key: str
    rate: float
    burst: int
    done: asyncio.Future[Decision]


# A bucket whose burst is at least LEASE_FRACTION⁻¹ tokens lends a process up to that fraction of
# it in one call, for LEASE_SECONDS: the checks that follow take a leased token without a round
# trip. Small buckets (a site limited to a few requests) lease nothing: they stay exact.
LEASE_FRACTION = 0.05
LEASE_SECONDS = 1.0
MAX_LEASES = 10_000


class RateLimiter:
    """Token buckets, checked in one Redis round trip per event-loop tick."""

    def __init__(self, client: aioredis.Redis, *, rate: float, burst: int, timeout: float) -> None:
        """`rate` (tokens per second; 0: no limit) and `burst` are the defaults a check may
        override."""
        self._client, self._timeout = client, timeout
        self.rate, self.burst = rate, burst
        self._script = client.register_script(_SCRIPT)
        self._pending: list[_Check] = []
        self._leased: dict[str, tuple[int, float]] = {}  # key → (tokens, until when)
        self._flushing = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def check(
        self, name: str, *, rate: float | None = None, burst: int | None = None
    ) -> Decision:
        """Take one token from the bucket `name` (say `site:<key>`); `rate` and `burst`
        default to the limiter's own."""
        rate = self.rate if rate is None else rate
        burst = self.burst if burst is None else burst
        if rate <= 0:
            return Decision(True, burst, burst, 0.0, 0.0)
        key = KEY_PREFIX + name
        leased = self._leased.get(key)
        if leased is not None:
            tokens, until = leased
            if until > time.monotonic():
                if tokens > 1:
                    self._leased[key] = (tokens - 1, until)
                else:
                    del self._leased[key]
                return Decision(True, burst, tokens - 1, 0.0, 0.0)
            del self._leased[key]
        done: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._pending.append(_Check(key, rate, burst, done))
        if not self._flushing:
            self._flushing = True
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await done

    async def _drain(self) -> None:
        # Whatever is checked while a call is in flight goes out together in the next one.
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                buckets: dict[str, list[_Check]] = {}
                for check in batch:
                    buckets.setdefault(check.key, []).append(check)
                # One bucket's checks share its first one's rate and burst (a key has one).
                try:
                    async with asyncio.timeout(self._timeout):
                        answer = await self._script(
                            keys=list(buckets),
                            args=[
                                x
                                for checks in buckets.values()
                                for x in (
                                    checks[0].rate,
                                    checks[0].burst,
                                    max(len(checks), int(checks[0].burst * LEASE_FRACTION)),
                                )
                            ],
                        )
                except (RedisError, OSError, TimeoutError) as exc:
                    LIMITER_FAILURES.inc(len(batch))
                    log.warning("rate_limit.unavailable", error=str(exc) or type(exc).__name__)
                    for check in batch:
                        _settle(check, Decision(True, check.burst, check.burst, 0.0, 0.0))
                    continue
                except BaseException as exc:  # a bug, or cancellation: every caller hears of it
                    for check in batch:
                        if not check.done.done():
                            check.done.set_exception(exc)
                    raise
                now = time.monotonic()
                until = now + LEASE_SECONDS
                if len(self._leased) > MAX_LEASES:  # keys checked once are forgotten here
                    self._leased = {k: v for k, v in self._leased.items() if v[1] > now}
                for i, (key, checks) in enumerate(buckets.items()):
                    granted, remaining, wait_ms, full_ms = answer[4 * i : 4 * i + 4]
                    if granted > len(checks):
                        self._leased[key] = (granted - len(checks), until)
                    for n, check in enumerate(checks):
                        allowed = n < granted
                        _settle(
                            check,
                            Decision(
                                allowed,
                                check.burst,
                                int(remaining) + (granted - 1 - n if allowed else 0),
                                0.0 if allowed else wait_ms / 1000,
                                full_ms / 1000,
                            ),
                        )
        finally:
            self._flushing = False


def _settle(check: _Check, decision: Decision) -> None:
    if not check.done.done():  # its caller may have been cancelled (a client went away)
        check.done.set_result(decision)
