"""ServiceError: an operation refused or failed as a whole, with a code and, for bad input, the
argument at fault.

A message that names an argument keeps the name as a structured part (`Arg`), not as text: the
Python caller reads `max_results`, and the GraphQL layer renders the same error with the name its
clients know (`maxResults`, `filter.queue`, `input.params`) through `ServiceError.render`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Arg:
    """An argument named in a message: `name` is the Python keyword of the service method (or
    of the filter), `path` a position inside its value (`.stages`, `[2]`), shown as is."""

    name: str
    path: str = ""


Part = str | Arg


def python_name(arg: Arg) -> str:
    return arg.name


class ServiceError(Exception):
    """`code` says which kind of error it is; `argument` names the argument at fault, if one is.

    `ServiceError("text")` as before; `ServiceError(Arg("sort"), " must be 'asc' or 'desc'")`
    names an argument (the first `Arg` is `argument`)."""

    BAD_USER_INPUT = "BAD_USER_INPUT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL_SERVER_ERROR"
    # The events after a subscription's afterEventId were pruned: reload, then subscribe anew.
    EVENTS_PRUNED = "EVENTS_PRUNED"

    def __init__(self, *parts: Part, code: str = BAD_USER_INPUT) -> None:
        self.parts = parts
        self.code = code
        self.arg = next((part for part in parts if isinstance(part, Arg)), None)
        super().__init__(self.message)

    @property
    def argument(self) -> str | None:
        """The Python name of the argument at fault, e.g. "max_results"; None if none is."""
        return self.arg.name if self.arg is not None else None

    @property
    def message(self) -> str:
        return self.render(python_name)

    def render(self, name_of: Callable[[Arg], str]) -> str:
        """The message with every argument named by `name_of` (e.g. GraphQL's names)."""
        return "".join(
            part if isinstance(part, str) else name_of(part) + part.path for part in self.parts
        )


def bad_argument(name: str, detail: str, path: str = "") -> ServiceError:
    """BAD_USER_INPUT: "<argument> <detail>", e.g. bad_argument("sort", "must be ...")."""
    return ServiceError(Arg(name, path), " " + detail)
