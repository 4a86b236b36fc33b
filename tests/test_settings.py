"""Settings come from CHECKMATE_* environment variables, with bounds that refuse bad values."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from checkmate.settings import HARD_MAX_RESULTS, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CHECKMATE_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = Settings()
    assert settings.database_url is None
    assert settings.store_url is None
    assert settings.data_dir == Path(".checkmate")
    assert settings.lock_timeout == 60
    assert settings.max_results_cap == 10_000
    assert settings.event_retention == timedelta(days=7)
    assert settings.task_modules == []


def test_values_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "CHECKMATE_DATABASE_URL": "postgresql://u@db:5432/cm",
        "CHECKMATE_STORE_URL": "s3://bucket/prefix",
        "CHECKMATE_DATA_DIR": str(tmp_path),
        "CHECKMATE_LOCK_TIMEOUT": "12.5",
        "CHECKMATE_MAX_RESULTS_CAP": "100000",
        "CHECKMATE_EVENT_RETENTION": "3600",
        "CHECKMATE_TASK_MODULES": " acme.etl, acme.ml ,,acme.report",
        "CHECKMATE_BATCH_CHUNK_SIZE": "250",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.database_url == "postgresql://u@db:5432/cm"
    assert settings.store_url == "s3://bucket/prefix"
    assert settings.resolved_data_dir == tmp_path.resolve()
    assert settings.lock_timeout == 12.5
    assert settings.max_results_cap == HARD_MAX_RESULTS == 100_000
    assert settings.event_retention == timedelta(hours=1)
    assert settings.task_modules == ["acme.etl", "acme.ml", "acme.report"]
    assert settings.batch_chunk_size == 250


def test_iso_duration_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHECKMATE_EVENT_RETENTION", "P2DT3H")
    assert Settings().event_retention == timedelta(days=2, hours=3)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CHECKMATE_MAX_RESULTS_CAP", "100001"),
        ("CHECKMATE_MAX_RESULTS_CAP", "0"),
        ("CHECKMATE_LOCK_TIMEOUT", "0"),
        ("CHECKMATE_LOCK_TIMEOUT", "soon"),
        ("CHECKMATE_BATCH_CHUNK_SIZE", "0"),
    ],
)
def test_out_of_bounds_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert name.removeprefix("CHECKMATE_").lower() in str(raised.value)
