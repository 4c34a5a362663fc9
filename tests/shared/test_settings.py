"""Settings accept the database URLs people write."""

import pytest

from shared.settings import Settings


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgres://u@db.example/leads", "postgresql+asyncpg://u@db.example/leads"),
        (
            "postgresql://u:p@db.example:6432/leads",
            "postgresql+asyncpg://u:p@db.example:6432/leads",
        ),
        ("postgresql+asyncpg://u@/leads?host=/run", "postgresql+asyncpg://u@/leads?host=/run"),
    ],
)
def test_database_urls_as_people_write_them_use_asyncpg(given: str, used: str) -> None:
    assert Settings(database_url=given).database_url == used


def test_the_environment_variable_is_normalised_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADSTREAM_DATABASE_URL", "postgres://postgres@127.0.0.1/leadstream")
    assert Settings().database_url == "postgresql+asyncpg://postgres@127.0.0.1/leadstream"
