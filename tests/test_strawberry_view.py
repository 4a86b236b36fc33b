"""pyproject's strawberry bound is the range schema/strawberry_view.py (the one module that
overrides strawberry internals) was tested with and refuses others at import
(tests/test_dependency_fences.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from schema.strawberry_view import TESTED_RANGE

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_bound_is_the_tested_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [strawberry] = [
        Requirement(item) for item in project["dependencies"]
        if Requirement(item).name == "strawberry-graphql"
    ]
    low, high = TESTED_RANGE
    assert strawberry.specifier == SpecifierSet(f">={low},<{high}")
