"""Settings: database URLs as people write them, and a JWT secret nobody can guess."""

import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.settings import MIN_SECRET_BYTES, Settings, local_secret


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


def test_without_a_configured_secret_one_is_generated_once_and_kept_private(
    tmp_path: Path,
) -> None:
    first = Settings(data_dir=tmp_path)
    again = Settings(data_dir=tmp_path)
    kept = tmp_path / "jwt-secret"
    assert first.jwt_secret == again.jwt_secret == kept.read_text()
    assert len(first.jwt_secret.encode()) >= MIN_SECRET_BYTES
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert Settings(data_dir=tmp_path / "elsewhere").jwt_secret != first.jwt_secret


def test_racing_processes_agree_on_the_generated_secret(tmp_path: Path) -> None:
    with ProcessPoolExecutor(4) as pool:
        secrets = set(pool.map(local_secret, [tmp_path / "jwt-secret"] * 8))
    assert len(secrets) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["jwt-secret"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"jwt_secret": "short"}, "at least 32 bytes"),
        ({"env": "prod"}, "must be set in production"),
    ],
)
def test_weak_or_missing_production_secrets_are_refused(
    tmp_path: Path, options: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(data_dir=tmp_path, **options)


def test_without_flower_credentials_a_login_is_generated_once_and_kept_private(
    tmp_path: Path,
) -> None:
    first = Settings(data_dir=tmp_path).flower_credentials()
    user, _, password = first.partition(":")
    assert user == "leadstream" and len(password) >= 32
    assert stat.S_IMODE((tmp_path / "flower-password").stat().st_mode) == 0o600
    assert Settings(data_dir=tmp_path).flower_credentials() == first
    configured = Settings(data_dir=tmp_path, flower_basic_auth="ops:" + "p" * 16)
    assert configured.flower_credentials() == "ops:" + "p" * 16


def test_production_flower_needs_configured_credentials(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, env="prod", jwt_secret="s" * MIN_SECRET_BYTES)
    with pytest.raises(ValueError, match="LEADSTREAM_FLOWER_BASIC_AUTH must be set"):
        settings.flower_credentials()
    assert not (tmp_path / "flower-password").exists()


@pytest.mark.parametrize(
    "given", ["nopassword", "ops:short", ":" + "p" * 16, "a:" + "p" * 16 + ",b:x"]
)
def test_weak_flower_credentials_are_refused(tmp_path: Path, given: str) -> None:
    with pytest.raises(ValidationError, match="user:password"):
        Settings(data_dir=tmp_path, flower_basic_auth=given)
