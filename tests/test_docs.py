"""The docs: the configuration page is generated from the settings class and must match it; the
README links every page."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from checkmate.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_page_matches_the_settings_class() -> None:
    check = subprocess.run(
        [sys.executable, "tools/config_docs.py", "--check"], cwd=ROOT, capture_output=True,
        text=True, check=False, timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    page = (ROOT / "docs" / "configuration.md").read_text()
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} has no description for the docs"
        assert f"`CHECKMATE_{name.upper()}`" in page


def test_readme_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, page.name
