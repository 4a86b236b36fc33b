"""Tested version ranges of the libraries whose internals CheckMate touches.

Each such library has one fence module (checkmate/db/embedded_compat.py,
checkmate/pydantic_compat.py, checkmate/obstore_compat.py, schema/graphql_compat.py) that calls
require_tested at import: a version outside the range fails there, loudly, instead of running
on internals that may have changed. pyproject.toml declares the same ranges, so an ordinary
install never gets such a version; this catches the installs that bypass it.
"""

from __future__ import annotations

import re
from importlib.metadata import version

_RELEASE = re.compile(r"\d+(?:\.\d+)*")


def release(text: str) -> tuple[int, ...]:
    """The release numbers of a version string: "3.3.0rc1" -> (3, 3, 0)."""
    match = _RELEASE.match(text.strip().lstrip("vV"))
    if match is None:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(part) for part in match.group().split("."))


def _padded(numbers: tuple[int, ...], length: int) -> tuple[int, ...]:
    return numbers + (0,) * (length - len(numbers))


def within(installed: str, minimum: str, below: str) -> bool:
    """minimum <= installed < below, on release numbers only: a pre-release of `below`
    ("3.4.0a1" against below "3.4") is outside, as it may already carry the change."""
    numbers, low, high = release(installed), release(minimum), release(below)
    length = max(len(numbers), len(low), len(high))
    return _padded(low, length) <= _padded(numbers, length) < _padded(high, length)


def require_tested(
    distribution: str, minimum: str, below: str, *, installed: str | None = None
) -> str:
    """The installed version of `distribution`; ImportError when it is outside the tested
    range [minimum, below)."""
    found = installed if installed is not None else version(distribution)
    if not within(found, minimum, below):
        raise ImportError(
            f"CheckMate is tested with {distribution}>={minimum},<{below} and relies on its "
            f"internals there; {distribution} {found} is installed. Install a version in that "
            f"range (pyproject.toml declares it): pip install '{distribution}>={minimum},<{below}'"
        )
    return found
