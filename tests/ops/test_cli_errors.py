"""The errors a newcomer meets are one line on stderr, with the fix, and a non-zero exit."""

import asyncio
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import make_url

from ops.local_services import drop_database, ensure_database
from ops.processes import BIN, free_port
from shared.settings import Settings
from tests.support.processes import REPO


def leadstream(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEADSTREAM_")}
    return subprocess.run(
        [str(BIN / "leadstream"), *args],
        env={**clean, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("leadstream: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def unmigrated(settings: Settings) -> Iterator[str]:
    url = make_url(settings.database_url).set(database=f"ls_empty_{uuid.uuid4().hex[:8]}")
    rendered = url.render_as_string(hide_password=False)
    asyncio.run(ensure_database(rendered))
    yield rendered
    asyncio.run(drop_database(rendered))


def test_database_unreachable(settings: Settings) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/leadstream"
    one_line(
        leadstream("token", "--tenant", "demo", LEADSTREAM_DATABASE_URL=url),
        "cannot reach PostgreSQL",
        "LEADSTREAM_DATABASE_URL",
    )


def test_database_missing_then_created_by_migrate(unmigrated: str) -> None:
    missing = make_url(unmigrated).set(database=f"ls_none_{uuid.uuid4().hex[:8]}")
    url = missing.render_as_string(hide_password=False)
    one_line(
        leadstream("token", "--tenant", "demo", LEADSTREAM_DATABASE_URL=url),
        "does not exist",
        "leadstream migrate",
    )
    try:
        migrated = leadstream("migrate", LEADSTREAM_DATABASE_URL=url)
        assert migrated.returncode == 0, migrated.stderr
        assert "at head" in migrated.stdout
    finally:
        asyncio.run(drop_database(url))


def test_database_not_migrated(unmigrated: str) -> None:
    one_line(
        leadstream("tenant", "create", "acme", LEADSTREAM_DATABASE_URL=unmigrated),
        "not migrated",
        "run `leadstream migrate`",
    )


def test_redis_unreachable_stops_run_before_it_starts_anything(settings: Settings) -> None:
    one_line(
        leadstream(
            "run",
            LEADSTREAM_DATABASE_URL=settings.database_url,
            LEADSTREAM_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
            LEADSTREAM_API_PORT=str(free_port()),
            LEADSTREAM_FLOWER_PORT=str(free_port()),
        ),
        "cannot reach Redis",
        "LEADSTREAM_REDIS_URL",
    )


def test_port_already_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_line(
            leadstream("run", LEADSTREAM_API_PORT=str(port)),
            f"port {port} is in use",
            "LEADSTREAM_API_PORT",
        )


@pytest.mark.parametrize(
    ("args", "env", "fragments"),
    [
        (["tenant", "create", "acme", "--region", "XX"], {}, ["unknown phone region 'XX'"]),
        (["token", "--tenant", "demo"], {"LEADSTREAM_DEFAULT_PHONE_REGION": "XX"}, ["XX"]),
        (["token", "--tenant", "demo", "--ttl", "0"], {}, ["--ttl must be 1 to"]),
        (["token", "--tenant", "demo", "--ttl", "-60"], {}, ["--ttl must be 1 to"]),
        (["token", "--tenant", "demo"], {"LEADSTREAM_JWT_SECRET": "short"}, ["32 bytes"]),
    ],
)
def test_bad_arguments_and_settings(
    args: list[str], env: dict[str, str], fragments: list[str]
) -> None:
    one_line(leadstream(*args, **env), *fragments)
