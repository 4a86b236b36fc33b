"""docker/compose.yaml as the issue asks: checked structurally everywhere, and by
`docker compose config` where a docker client with compose exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker" / "compose.yaml"
ONE_SHOT = {"migrate", "create-bucket"}


def services() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return dict(loaded["services"])


def test_compose_shape() -> None:
    found = services()
    assert {"postgres", "minio", "create-bucket", "migrate", "api", "proxy", "worker"} <= set(
        found
    )
    own = {name: service for name, service in found.items() if "checkmate" in str(service)}
    assert len({service["image"] for name, service in own.items()
                if name in ("migrate", "api", "worker")}) == 1
    assert [name for name, service in found.items() if "build" in service] == ["migrate"]
    for name, service in found.items():
        if name not in ONE_SHOT:
            assert "healthcheck" in service, name
        if "build" not in service and "CHECKMATE_IMAGE" not in service["image"]:
            tag = service["image"].rpartition(":")[2]
            assert re.search(r"\d", tag), f"{name} is not pinned"
    assert "/readyz" in str(found["api"]["healthcheck"]["test"])
    assert " -h " in str(found["postgres"]["healthcheck"]["test"])
    assert found["api"]["deploy"]["replicas"] == 2
    assert found["worker"]["deploy"]["replicas"] == 2
    assert "ports" not in found["api"]  # only the proxy is published
    assert found["proxy"]["ports"] == ["127.0.0.1:8000:8080"]
    nginx = (ROOT / "docker" / "nginx.conf").read_text()
    assert "proxy_set_header Upgrade $http_upgrade" in nginx


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".checkmate", ".git"} <= set(ignored)
    assert "/readyz" in (ROOT / "docker" / "Dockerfile").read_text()


def _compose() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    return [docker, "compose"] if probe.returncode == 0 else None


def test_docker_compose_config_validates() -> None:
    compose = _compose()
    if compose is None:
        pytest.skip("no docker client with the compose plugin here")
    result = subprocess.run(
        [*compose, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True,
        check=False, timeout=60,
    )
    assert result.returncode == 0, result.stderr
