"""bench/bench_reads.py at a tiny size, so the side-by-side benchmark cannot rot unnoticed.

PostGraphile runs too where node and npm are there (installed once into the bench's cache
folder); without them the bench reports CheckMate alone, which is what is checked then."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import bench_reads

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


def test_the_read_bench_runs_and_writes_its_table(server_url: str, tmp_path: Path) -> None:
    report = tmp_path / "benchmarks.md"
    bench_reads.main([
        "--rows", "300", "--duration", "1", "--rounds", "1", "--connections", "1",
        "--big", "200", "--big-repeats", "1", "--queries", "page",
        "--database-url", server_url, "--store-dir", str(tmp_path / "store"),
        "--objects-for", "200", "--write", str(report),
    ])
    text = report.read_text()
    page = next(line for line in text.splitlines() if line.startswith("| page | 1 |"))
    cells = [cell.strip() for cell in page.strip("|").split("|")]
    assert float(cells[2].split()[0]) > 0, page
    if shutil.which("node") and shutil.which("npm"):
        assert cells[4].endswith("x"), page  # PostGraphile answered and a ratio was taken
    assert "stage metadata" in text
    assert "server time p50" in text
