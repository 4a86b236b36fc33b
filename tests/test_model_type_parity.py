"""The GraphQL output types (schema/types.py) are filled straight from the service's pydantic
models (checkmate/models.py), tied together only by `cast`: a field added to one and not the
other would go unnoticed until a client asks for it. Every field must exist on both sides, or
be listed below with the reason it differs."""

from __future__ import annotations

from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel
from strawberry.types.base import StrawberryOptional, get_object_definition

from checkmate import models
from schema import types

MIRRORS: list[tuple[type[BaseModel], type]] = [
    (models.TaskLock, types.TaskLock),
    (models.StageMetadata, types.StageMetadata),
    (models.CheckMateTask, types.CheckMateTask),
    (models.CheckMateTaskBatchResult, types.CheckMateTaskBatchResult),
    (models.StatusEvent, types.TaskStatusEvent),
]

# Deliberate differences: (GraphQL type, python field name) -> why.
GRAPHQL_ONLY: dict[tuple[str, str], str] = {
    # Resolved from the loaders (the task as it is now), not carried by the result or event.
    ("CheckMateTaskBatchResult", "task"): "resolver: the task after the action",
    ("TaskStatusEvent", "task"): "resolver: the task when the event is delivered",
}
MODEL_ONLY: dict[tuple[str, str], str] = {}


def _graphql_fields(graphql_type: type) -> dict[str, Any]:
    definition = get_object_definition(graphql_type, strict=True)
    return {field.python_name: field for field in definition.fields}


def _allows_none(annotation: Any) -> bool:
    if annotation is None or annotation is NoneType:
        return True
    if get_origin(annotation) in (Union, UnionType):
        return NoneType in get_args(annotation)
    return False


@pytest.mark.parametrize(
    ("model", "graphql_type"), MIRRORS, ids=[graphql.__name__ for _, graphql in MIRRORS]
)
def test_model_and_graphql_type_have_the_same_fields(
    model: type[BaseModel], graphql_type: type
) -> None:
    name = graphql_type.__name__
    on_model = set(model.model_fields)
    on_graphql = set(_graphql_fields(graphql_type))
    graphql_only = {field for field in on_graphql - on_model if (name, field) not in GRAPHQL_ONLY}
    model_only = {field for field in on_model - on_graphql if (name, field) not in MODEL_ONLY}
    assert not graphql_only, f"{name} has {sorted(graphql_only)}, {model.__name__} does not"
    assert not model_only, f"{model.__name__} has {sorted(model_only)}, GraphQL {name} does not"
    # An allow-listed difference that is no longer one must leave the list.
    listed_graphql_only = {field for (type_name, field) in GRAPHQL_ONLY if type_name == name}
    listed_model_only = {field for (type_name, field) in MODEL_ONLY if type_name == name}
    stale = (listed_graphql_only & on_model) | (listed_model_only & on_graphql)
    assert not stale, f"{name}: allow-listed differences that no longer differ: {sorted(stale)}"


@pytest.mark.parametrize(
    ("model", "graphql_type"), MIRRORS, ids=[graphql.__name__ for _, graphql in MIRRORS]
)
def test_a_field_the_model_may_leave_none_is_nullable_in_graphql(
    model: type[BaseModel], graphql_type: type
) -> None:
    """A plain field (no resolver) serves the model's value as it is: None in a non-null
    GraphQL field would fail the whole object at run time."""
    graphql_fields = _graphql_fields(graphql_type)
    not_nullable = [
        name
        for name, info in model.model_fields.items()
        if name in graphql_fields
        and graphql_fields[name].base_resolver is None
        and _allows_none(info.annotation)
        and not isinstance(graphql_fields[name].type, StrawberryOptional)
    ]
    assert not not_nullable, f"{graphql_type.__name__}: nullable in the model only: {not_nullable}"


def test_the_checks_see_a_difference() -> None:
    """The helpers themselves: a field present on one side only is found."""
    assert "task" in set(_graphql_fields(types.TaskStatusEvent)) - set(
        models.StatusEvent.model_fields
    )
    assert _allows_none(models.CheckMateTask.model_fields["stage"].annotation)
    assert not _allows_none(models.CheckMateTask.model_fields["name"].annotation)
