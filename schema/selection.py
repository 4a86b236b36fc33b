"""Which CheckMateTask fields a query selects, so that a page reads only those columns."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from strawberry.types.nodes import FragmentSpread, InlineFragment, SelectedField


def _fields(selections: Iterable[Any]) -> Iterable[SelectedField]:
    """Fields of a selection set, through fragments (skip/include ignored: reading a column too
    many is harmless)."""
    for selection in selections:
        if isinstance(selection, SelectedField):
            yield selection
        elif isinstance(selection, FragmentSpread | InlineFragment):
            yield from _fields(selection.selections)


def _python_names(info: Any, type_name: str) -> dict[str, str]:
    definition = info.schema.get_type_by_name(type_name)
    convert = info.schema.config.name_converter.get_graphql_name
    return {convert(field): field.python_name for field in definition.fields}


def task_fields(info: Any, child: str, type_name: str = "CheckMateTask") -> set[str] | None:
    """The python names of the `type_name` fields selected under `child` of the resolver's
    field (e.g. tasks { nodes { ... } }); None when that cannot be told (then read all)."""
    names = _python_names(info, type_name)
    wanted: set[str] = set()
    for field in _fields(info.selected_fields):
        for sub in _fields(field.selections):
            if sub.name != child:
                continue
            for leaf in _fields(sub.selections):
                if leaf.name == "__typename":
                    continue
                if leaf.name not in names:
                    return None
                wanted.add(names[leaf.name])
    return wanted
