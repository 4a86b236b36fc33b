"""The strawberry version fence: schema/strawberry_view.py, the one module that overrides
strawberry internals, refuses at import any release outside the range it was tested with, and
pyproject's bound says the same range."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from schema.strawberry_view import TESTED_VERSIONS, check_version

ROOT = Path(__file__).resolve().parent.parent


def test_tested_releases_pass() -> None:
    check_version("0.341.0")
    check_version("0.341.2")


@pytest.mark.parametrize("installed", ["0.340.9", "0.342.0", "1.0.0", "0.3", "nightly"])
def test_other_releases_fail_naming_the_range(installed: str) -> None:
    with pytest.raises(ImportError) as refused:
        check_version(installed)
    assert installed in str(refused.value)
    assert "strawberry-graphql>=0.341,<0.342" in str(refused.value)


def test_import_fails_loudly_with_an_untested_strawberry() -> None:
    code = (
        "import importlib.metadata as metadata\n"
        "metadata.version = lambda name: '0.399.0'\n"
        "import schema.strawberry_view\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "0.399.0 is installed" in result.stderr


def test_pyproject_bound_is_the_tested_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [strawberry] = [
        Requirement(item) for item in project["dependencies"]
        if Requirement(item).name == "strawberry-graphql"
    ]
    (low_major, low_minor), (high_major, high_minor) = TESTED_VERSIONS
    assert strawberry.specifier == SpecifierSet(
        f">={low_major}.{low_minor},<{high_major}.{high_minor}"
    )
