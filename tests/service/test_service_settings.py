"""Settings: environment names, and production refusing single-machine defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings, get_settings

SAFE_PROD = {
    "env": "prod",
    "database_url": "postgresql+psycopg://hydra@db/hydra",
    "broker_url": "redis://redis:6379/0",
    "storage_backend": "s3",
    "s3_bucket": "hydra",
    "s3_access_key": "a",
    "s3_secret_key": "b",
}


def test_defaults_are_the_embedded_deployment() -> None:
    s = Settings(_env_file=None)
    assert s.database_url.startswith("sqlite") and s.broker_url.startswith("sqla+sqlite")
    assert (s.storage_backend, s.queue_name, s.lease_seconds, s.max_attempts) == ("local", "gpu", 120, 3)
    assert s.max_upload_bytes == 200 * 1024 * 1024 and s.max_spec_bytes == 1024 * 1024
    assert s.rate_limit_per_minute == 600 and s.progress_min_interval_s == 1.0


def test_environment_prefix(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HYDRA_QUEUE_NAME", "gpu-a100")
    monkeypatch.setenv("HYDRA_MAX_ATTEMPTS", "5")
    get_settings.cache_clear()
    try:
        assert get_settings().queue_name == "gpu-a100" and get_settings().max_attempts == 5
        assert get_settings() is get_settings()  # built once
    finally:
        get_settings.cache_clear()


def test_prod_accepts_safe_settings() -> None:
    assert Settings(**SAFE_PROD).env == "prod"


@pytest.mark.parametrize(
    "override, needle",
    [
        ({"database_url": "sqlite:///var/hydra.db"}, "HYDRA_DATABASE_URL"),
        ({"broker_url": "sqla+sqlite:///var/broker.db"}, "HYDRA_BROKER_URL"),
        ({"storage_backend": "local"}, "HYDRA_STORAGE_BACKEND"),
        ({"s3_secret_key": None}, "HYDRA_S3_SECRET_KEY"),
        ({"s3_access_key": ""}, "HYDRA_S3_ACCESS_KEY"),
        ({"s3_bucket": None}, "HYDRA_S3_BUCKET"),
    ],
)
def test_prod_refuses_unsafe_defaults(override: dict, needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(**{**SAFE_PROD, **override})
    assert needle in str(err.value)


def test_settings_are_hashable_and_frozen() -> None:
    s = Settings()
    assert hash(s) == hash(Settings())
    with pytest.raises(ValidationError):
        s.queue_name = "x"  # type: ignore[misc]
