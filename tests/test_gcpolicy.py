"""The collector's policy is set by CheckMate's own processes (`checkmate serve`, `checkmate
worker`) and by nothing a program imports: the app, the service and the schema leave it alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from checkmate import cli
from checkmate.gcpolicy import PROCESS_THRESHOLD
from checkmate.settings import Settings
from tests.graphql_helpers import running_api

CALLERS = (700, 10, 10)


@pytest.fixture
def callers_threshold() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(*CALLERS)
    yield
    gc.set_threshold(*saved)


async def test_the_app_and_the_service_keep_the_callers_collector(
    settings: Settings, callers_threshold: None
) -> None:
    async with running_api(settings) as api:
        assert gc.get_threshold() == CALLERS
        await api.data("{ tasks(maxResults: 10) { nodes { id } } }")
        await api.data('mutation { cancelTasks(filter: {queue: "x"}) { dryRun } }')
        await api.service.cancel(queue="x")
        assert gc.get_threshold() == CALLERS


def test_checkmate_serve_sets_the_policy_in_the_serving_process(
    monkeypatch: pytest.MonkeyPatch, callers_threshold: None
) -> None:
    app = object()
    monkeypatch.setattr("server.create_app", lambda: app)
    assert cli.serving_app() is app
    assert gc.get_threshold() == PROCESS_THRESHOLD


def test_checkmate_worker_sets_the_policy(
    monkeypatch: pytest.MonkeyPatch, callers_threshold: None
) -> None:
    seen: list[tuple[int, int, int]] = []

    def run_worker(**kwargs: Any) -> int:
        seen.append(gc.get_threshold())
        return 0

    monkeypatch.setattr("checkmate.worker.run_worker", run_worker)
    result = CliRunner().invoke(cli.app, ["worker", "--concurrency", "1"])
    assert result.exit_code == 0, result.output
    assert seen == [PROCESS_THRESHOLD]
