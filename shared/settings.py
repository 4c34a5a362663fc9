"""The one settings object, read from `LEADSTREAM_*` environment variables (see README)."""

from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "dev-only-change-me-leadstream-secret-32b"  # noqa: S105 - refused when env=prod


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEADSTREAM_", extra="ignore")

    env: Literal["dev", "prod"] = "dev"
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/leadstream"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Celery's broker; empty means redis_url. An amqp:// URL moves the queues to RabbitMQ.
    broker_url: str = ""

    jwt_secret: str = DEV_JWT_SECRET
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    flower_port: int = 5555

    default_phone_region: str = "US"
    max_wait_seconds: int = Field(30, ge=0, le=300)
    # How long the API waits for Redis before answering 503: it must never hang.
    enqueue_timeout_seconds: float = Field(0.5, gt=0)
    enqueue_max_events_per_message: int = Field(200, ge=1, le=1000)
    # How long a page view waits for others to share its queue message (leads never wait),
    # unless the message already holds `enqueue_activity_flush_events` events.
    enqueue_activity_linger_ms: float = Field(20.0, ge=0, le=200)
    enqueue_activity_flush_events: int = Field(32, ge=1, le=1000)
    queued_marker_ttl_seconds: int = 7 * 24 * 3600
    outcome_ttl_seconds: int = 3600
    idempotency_ttl_seconds: int = 24 * 3600
    outcome_stream_maxlen: int = 100_000

    worker_concurrency: int = Field(2, ge=1)
    # Redelivery of an unacked message happens after this; it must exceed the hard time limit.
    visibility_timeout_seconds: int = 300
    task_time_limit_seconds: int = 90
    # Transient failures retry with backoff (≤ 20 s each) this often, then become dead letters.
    task_max_retries: int = 40
    db_pool_size: int = 5
    db_lock_timeout_ms: int = 10_000
    db_statement_timeout_ms: int = 30_000

    log_level: str = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("database_url")
    @classmethod
    def _asyncpg_url(cls, value: str) -> str:
        """Accept PostgreSQL URLs as people write them; both processes use the asyncpg driver."""
        scheme, sep, rest = value.partition("://")
        if sep and scheme in {"postgres", "postgresql"}:
            return f"postgresql+asyncpg://{rest}"
        return value

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def broker_is_redis(self) -> bool:
        return self.celery_broker_url.startswith(("redis://", "rediss://", "redis+socket://"))


@lru_cache
def get_settings() -> Settings:
    settings = Settings()
    if settings.env == "prod" and settings.jwt_secret == DEV_JWT_SECRET:
        raise RuntimeError("LEADSTREAM_JWT_SECRET must be set in production")
    return settings
