"""Engine factory. Sessions and transactions belong to the boundary (a request or a task)."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared.settings import Settings


def create_engine(
    settings: Settings, *, pool_size: int | None = None, pre_ping: bool = True
) -> AsyncEngine:
    """`pre_ping=False` where a dead connection's first error is retried anyway (the worker):
    the ping costs round trips on every checkout."""
    return create_async_engine(
        settings.database_url,
        pool_size=pool_size or settings.db_pool_size,
        pool_pre_ping=pre_ping,
        connect_args={
            # A wait that long means something is stuck: fail, and let the task retry.
            "server_settings": {
                "lock_timeout": str(settings.db_lock_timeout_ms),
                "statement_timeout": str(settings.db_statement_timeout_ms),
                # Plan each execution with its arrays' real values and the table's real size: a
                # generic plan cached while `events` was small seq-scanned it for `id = ANY($1)`
                # ever after (1 ms of PostgreSQL CPU per event in a 100k burst, bench/).
                "plan_cache_mode": "force_custom_plan",
            },
        },
    )


_REPO = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = _REPO / "migrations"


def migration_head() -> str | None:
    """The newest Alembic revision this code expects."""
    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def migrate_database(database_url: str) -> None:
    """Upgrade the database to MIGRATIONS_DIR's head (idempotent)."""
    config = Config(str(_REPO / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    command.upgrade(config, "head")
