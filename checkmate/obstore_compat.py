"""What CheckMate relies on in obstore beyond its documented API: the on-disk layout of a
LocalStore, which checkmate/store.py's plain-file path (the worker's inline reads and writes,
read_many's one-thread folder read) shares with obstore itself:

- the object at path "a/b" of a LocalStore rooted at R is the file R/a/b, with the bytes put;
- obstore writes an object into a staging file "<target>#<n>" first and renames it into place,
  and its listings skip such staging files (so the plain-file writes may stage the same way);
- put(mode="create") fails with AlreadyExistsError when the file exists, however it was made.

Read from obstore 0.12; any other version fails here at import. tests/test_dependency_fences.py
checks each point against the installed obstore.
"""

from __future__ import annotations

from obstore.store import LocalStore

from checkmate.versions import require_tested

__all__ = ["TESTED_RANGE", "LocalStore"]

TESTED_RANGE = ("0.12", "0.13")
require_tested("obstore", *TESTED_RANGE)
