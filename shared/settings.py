"""The one settings object, read from `LEADSTREAM_*` environment variables (see README)."""

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

import phonenumbers
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_SECRET_BYTES = 32  # HS256's own key size: shorter secrets can be brute-forced offline
MIN_FLOWER_PASSWORD = 16
FLOWER_USER = "leadstream"  # of the generated Flower credentials


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEADSTREAM_", extra="ignore")

    env: Literal["dev", "prod"] = "dev"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/leadstream"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Names this installation's outcome channel, with the Redis database number: pub/sub
    # channels are global to a Redis server, so installations sharing one must not collide.
    deployment_id: str = Field("leadstream", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Celery's broker; empty means redis_url. An amqp:// URL moves the queues to RabbitMQ.
    broker_url: str = ""

    # Where `make run` finds PostgreSQL and Redis: `auto` (the URLs, else localhost, else
    # containers, else embedded servers), `local` (localhost only) or `embedded` (never localhost).
    services: Literal["auto", "local", "embedded"] = "auto"
    # Local state of `make run` and the CLI: embedded servers' data, the generated JWT secret.
    data_dir: Path = Path(__file__).resolve().parents[1] / ".data"
    # Empty: outside prod, a random secret generated once and kept in data_dir (mode 0600).
    jwt_secret: str = Field("", repr=False)
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    # No token lives longer than this: a leaked one stops working by itself.
    token_max_ttl_seconds: int = Field(90 * 24 * 3600, gt=0)
    # How long an API process trusts what it read of a tenant (exists, active, token version):
    # a disable or a token revocation takes effect within this.
    tenant_cache_seconds: float = Field(30.0, gt=0, le=300)

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    flower_port: int = 5555
    # `user:password` (comma-separated for several) Flower asks for. Empty: outside prod, user
    # `leadstream` with a random password generated once into data_dir (mode 0600).
    flower_basic_auth: str = Field("", repr=False)

    default_phone_region: str = "US"
    max_wait_seconds: int = Field(30, ge=0, le=300)
    # Callers one API process lets wait (`Prefer: wait`) at once; beyond it, 202 at once.
    max_waiters_per_process: int = Field(1000, ge=0)
    # A request body must have arrived within this (408 otherwise): a slow sender holds nothing.
    body_timeout_seconds: float = Field(10.0, gt=0, le=30)
    # What the HTTP server (ingest_api/server.py) allows a sender, per API process: a request
    # head (request line and headers) whole within this many seconds of its connection or of
    # its first byte, ...
    header_timeout_seconds: float = Field(10.0, gt=0, le=30)
    # ... and no longer than this (431 beyond); beyond `max_connections`, a new one is closed.
    max_header_bytes: int = Field(32 * 1024, ge=1024, le=1024 * 1024)
    max_connections: int = Field(1000, ge=1)
    # The broker's time for one write, counted from the moment it is sent (a large write gets
    # more): past it Redis refuses the write and the API answers 503. It never hangs: a 503
    # comes within 2x this plus 0.25 s (getting a connection, then the reply's margin).
    enqueue_timeout_seconds: float = Field(0.5, gt=0)
    enqueue_max_events_per_message: int = Field(200, ge=1, le=1000)
    # How long a page view waits for others to share its queue message (leads never wait),
    # unless the message already holds `enqueue_activity_flush_events` events.
    enqueue_activity_linger_ms: float = Field(20.0, ge=0, le=200)
    enqueue_activity_flush_events: int = Field(32, ge=1, le=1000)
    queued_marker_ttl_seconds: int = 7 * 24 * 3600
    # Outcomes live in PostgreSQL; Redis keeps a copy of one only for a caller who waits for it,
    # and of a keyed duplicate answered by another event's outcome (it has no row of its own).
    outcome_wait_ttl_seconds: int = Field(60, gt=0)
    outcome_ttl_seconds: int = Field(3600, gt=0)
    idempotency_ttl_seconds: int = 24 * 3600
    # The operator vouches for noeviction where Redis refuses CONFIG GET (managed services).
    redis_policy_checked: bool = False
    redis_policy_recheck_seconds: float = Field(60.0, gt=0)
    outcome_stream_maxlen: int = 100_000

    # Token buckets per Bearer token and per site key (a site's own rate overrides them); one
    # request costs one token. A rate of 0 turns the limiter off.
    rate_limit_per_second: float = Field(200.0, ge=0)
    rate_limit_burst: int = Field(400, ge=1)
    # Site keys are looked up through a per-process cache: a revoked key stops working within
    # this many seconds.
    site_key_cache_seconds: float = Field(30.0, ge=0, le=3600)
    site_key_cache_size: int = Field(10_000, ge=1)

    worker_concurrency: int = Field(2, ge=1)
    # Redelivery of an unacked message happens after this; it must exceed the hard time limit.
    # Redelivery is idempotent, so a short timeout is safe: a killed worker's messages come back
    # this soon (plus at most RESTORE_SWEEP_SECONDS), to any live worker.
    visibility_timeout_seconds: int = 45
    task_time_limit_seconds: int = 30
    # Transient failures retry with backoff (≤ 20 s each) this often, then become dead letters.
    task_max_retries: int = 40
    db_pool_size: int = 5
    db_lock_timeout_ms: int = 10_000
    db_statement_timeout_ms: int = 20_000  # below the task time limit: a statement fails first
    # Advisory locks one transaction may take: a message needing more is committed in several
    # transactions. Keep it well below max_locks_per_transaction x max_connections.
    lock_budget_per_transaction: int = Field(1000, ge=50)
    # Earlier anonymous events of a newly identified visitor attached in the event's own
    # transaction (newest first); the rest by the follow-up task, this many per run.
    backfill_rows_per_transaction: int = Field(1000, ge=1)
    # Dead letters are kept this long; idempotency keys for idempotency_ttl_seconds.
    dead_letter_retention_seconds: int = Field(30 * 24 * 3600, gt=0)
    # Each worker process purges expired rows at most this often, this many per table a run.
    purge_interval_seconds: int = Field(60, gt=0)
    purge_rows_per_run: int = Field(1000, ge=1)

    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("default_phone_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        return known_region(value)

    @field_validator("database_url")
    @classmethod
    def _asyncpg_url(cls, value: str) -> str:
        """Accept PostgreSQL URLs as people write them; both processes use the asyncpg driver."""
        scheme, sep, rest = value.partition("://")
        if sep and scheme in {"postgres", "postgresql"}:
            return f"postgresql+asyncpg://{rest}"
        return value

    @model_validator(mode="after")
    def _secret(self) -> Self:
        if not self.jwt_secret:
            if self.env == "prod":
                raise ValueError(
                    f"LEADSTREAM_JWT_SECRET must be set in production ({MIN_SECRET_BYTES}+ bytes)"
                )
            self.jwt_secret = local_secret(self.data_dir / "jwt-secret")
        if len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"LEADSTREAM_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        return self

    @field_validator("flower_basic_auth")
    @classmethod
    def _credentials(cls, value: str) -> str:
        for pair in filter(None, value.split(",")):
            user, _, password = pair.partition(":")
            if not user or len(password) < MIN_FLOWER_PASSWORD:
                raise ValueError(
                    f"use user:password, the password at least {MIN_FLOWER_PASSWORD} characters"
                )
        return value

    def flower_credentials(self) -> str:
        """Flower's `user:password` list: the setting, else (outside prod) a generated one."""
        if self.flower_basic_auth:
            return self.flower_basic_auth
        if self.env == "prod":
            raise ValueError(
                "LEADSTREAM_FLOWER_BASIC_AUTH must be set in production (user:password)"
            )
        return f"{FLOWER_USER}:{local_secret(self.data_dir / 'flower-password')}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def broker_is_redis(self) -> bool:
        return self.celery_broker_url.startswith(("redis://", "rediss://", "redis+socket://"))


def known_region(value: str) -> str:
    """An ISO 3166 alpha-2 region phonenumbers knows (`gb` → `GB`); ValueError otherwise."""
    region = value.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown phone region {value!r}: use an ISO 3166 code such as US, GB, DE")
    return region


def local_secret(path: Path) -> str:
    """The secret kept at `path`, made on first use; processes racing to make it agree."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48))
    try:
        os.link(draft, path)  # atomic, and never over a secret another process made first
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    return Settings()
