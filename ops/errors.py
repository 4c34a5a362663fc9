"""One clear line, with the fix, for the errors a newcomer meets, instead of a traceback."""

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import redis
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError

# What a client sees when the server is not there, or refuses it before any query.
_UNREACHABLE_PG = (
    OSError,
    asyncpg.CannotConnectNowError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidPasswordError,
    asyncpg.TooManyConnectionsError,
)


class CommandError(Exception):
    """A failure the user can fix; the message says how."""


def shown(url: str) -> str:
    """A URL as it may be printed: without its password."""
    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def reaching_database(url: str) -> Iterator[None]:
    """Turn "no server", "no database" and "not migrated" into CommandErrors naming the fix."""
    try:
        yield
    except (DBAPIError, *_UNREACHABLE_PG) as exc:
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        cause = getattr(cause, "__cause__", None) or cause  # SQLAlchemy's adapter wraps asyncpg
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            raise CommandError(
                f"the database of {shown(url)} does not exist: `leadstream migrate` creates it"
            ) from None
        if isinstance(cause, asyncpg.UndefinedTableError):
            raise CommandError(
                f"the database {shown(url)} is not migrated: run `leadstream migrate`"
            ) from None
        if isinstance(cause, _UNREACHABLE_PG):
            raise CommandError(
                f"cannot reach PostgreSQL at {shown(url)} ({cause or type(cause).__name__}):"
                " start it, or set LEADSTREAM_DATABASE_URL"
            ) from None
        raise


@contextmanager
def reaching_redis(url: str) -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise CommandError(
            f"cannot reach Redis at {shown(url)} ({exc}): start it, or set LEADSTREAM_REDIS_URL"
        ) from None
