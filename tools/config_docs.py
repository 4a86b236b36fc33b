"""Write docs/configuration.md from checkmate.settings.Settings, so the page cannot drift from the
code: `python tools/config_docs.py` rewrites it, `--check` exits 1 when it is stale (a test runs
that)."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "configuration.md"
sys.path.insert(0, str(ROOT))

from checkmate.settings import Settings  # noqa: E402

HEADER = """# Configuration

Every setting is an environment variable, read in one place (`checkmate/settings.py`, class
`Settings`). This page is generated from that class by `python tools/config_docs.py`; a test fails
when it is stale.

| variable | default | meaning |
|---|---|---|
"""

FOOTER = """
Command options with their own variables (not in `Settings`, as only one command reads them):

| variable | command | meaning |
|---|---|---|
| `CHECKMATE_WS_COMPRESSION` | `serve --ws-compression` | permessage-deflate on websockets (off) |
| `CHECKMATE_INSECURE` | `serve --insecure` | serve a non-loopback address while access is open |
| `CHECKMATE_LOG_FORMAT` | `serve`, `worker` `--log-format` | `text` (default) or `json` |
| `CHECKMATE_LOG_LEVEL` | `serve`, `worker` `--log-level` | `debug`, `info` (default), ... |
| `CHECKMATE_WORKER_METRICS_PORT` | `worker --metrics-port` | the worker's Prometheus port |
| `CHECKMATE_WORKER_METRICS_HOST` | `worker --metrics-host` | its address (`127.0.0.1`) |
| `CHECKMATE_URL` | `tasks ... --url` | a remote API for `checkmate tasks` |
| `CHECKMATE_TOKEN` | `tasks ... --token` | its API token |
"""


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g} s"
    if isinstance(value, list):
        return ",".join(value) or "empty"
    return str(value)


def render() -> str:
    prefix = Settings.model_config.get("env_prefix", "")
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name.upper()}` | `{_default(default)}` | {meaning} |")
    return HEADER + "\n".join(rows) + "\n" + FOOTER


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE.relative_to(ROOT)} is stale: run python tools/config_docs.py")
            return 1
        return 0
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
