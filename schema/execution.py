"""A faster completion of objects whose selected fields are all plain leaves.

graphql-core completes every field of every object on its own (resolve info, path, awaitable
checks, leaf completion): about 60,000 such rounds for a page of 10,000 tasks with six fields.
When every field selected on an object is a plain field (strawberry's attribute read, no resolver,
no arguments, no middleware) of a scalar or enum type, or a list of them, this context builds the
object's result in one pass. Anything else, and any value it cannot complete without an error
(null in a non-null field, a value its scalar rejects), goes the ordinary way, which also
reports the error with its path exactly as graphql-core does.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from enum import Enum
from operator import attrgetter
from typing import Any

from graphql import (
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLError,
    GraphQLID,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLString,
    is_leaf_type,
)

from schema.graphql_compat import Path
from schema.strawberry_view import (
    GraphQLCoreConverter,
    StrawberryField,
    StrawberryGraphQLCoreExecutionContext,
)

# (response key, read the value from the source, complete the value, non-null, list of leaves,
#  list items non-null)
_Plain = tuple[str, Callable[..., Any], Callable[[Any], Any], bool, bool, bool]
_NOT_PLAIN: list[_Plain] = []


class _Fallback(Exception):
    """The fast path cannot complete this object; the ordinary path will (or report why)."""


_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


def _exactly(kind: type, coerce: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A value already of the scalar's own Python type is its own result; others coerce."""

    def serialize(value: Any) -> Any:
        return value if value.__class__ is kind else coerce(value)

    return serialize


def _int(coerce: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def serialize(value: Any) -> Any:
        if value.__class__ is int and _INT_MIN <= value <= _INT_MAX:
            return value
        return coerce(value)

    return serialize


def _enum(enum_type: GraphQLEnumType) -> Callable[[Any], Any]:
    """A dict lookup instead of strawberry's scan of the values for every value."""
    names: dict[Any, str] = {}
    for name, definition in enum_type.values.items():
        names[definition.value] = name
        if isinstance(definition.value, Enum):
            names[definition.value.value] = name
    wrapped = getattr(enum_type, "wrapped_cls", None)
    for member in wrapped or ():
        if member.value in names:
            names[member] = names[member.value]
    coerce = enum_type.coerce_output_value

    def serialize(value: Any) -> Any:
        name = names.get(value)
        return coerce(value) if name is None else name

    return serialize


def _serializer(leaf: Any) -> Callable[[Any], Any]:
    """The fastest exact serializer of a leaf type; anything unusual takes the type's own."""
    coerce: Callable[[Any], Any] = leaf.coerce_output_value
    if leaf is GraphQLString or leaf is GraphQLID:
        return _exactly(str, coerce)
    if leaf is GraphQLInt:
        return _int(coerce)
    if leaf is GraphQLBoolean:
        return _exactly(bool, coerce)
    if isinstance(leaf, GraphQLEnumType):
        return _enum(leaf)
    return coerce


def _leaf_plan(field_type: GraphQLOutputType) -> tuple[Callable[[Any], Any], bool, bool, bool]:
    """(serialize, non_null, is_list, items_non_null); _Fallback when not a leaf or leaf list."""
    non_null = isinstance(field_type, GraphQLNonNull)
    inner = field_type.of_type if isinstance(field_type, GraphQLNonNull) else field_type
    if is_leaf_type(inner):
        return _serializer(inner), non_null, False, False
    if isinstance(inner, GraphQLList):
        item = inner.of_type
        items_non_null = isinstance(item, GraphQLNonNull)
        item = item.of_type if isinstance(item, GraphQLNonNull) else item
        if is_leaf_type(item):
            return _serializer(item), non_null, True, items_non_null
    raise _Fallback


def _reader(field: Any, resolve: Callable[..., Any]) -> Callable[[Any], Any]:
    """attrgetter for strawberry's plain attribute fields (what its default resolver does,
    minus three Python calls per value); the resolver itself otherwise."""
    definition = (field.extensions or {}).get(GraphQLCoreConverter.DEFINITION_BACKREF)
    if (
        isinstance(definition, StrawberryField)
        and definition.is_basic_field
        and definition.default_resolver is getattr
        and definition.python_name
    ):
        return attrgetter(definition.python_name)
    return lambda source: resolve(source, None)


log = logging.getLogger(__name__)


class FastPathCounts:
    """What the fast path completed, and how often it failed unexpectedly. It hooks into
    graphql-core and strawberry internals, so an upgrade can turn it off without any error:
    tests assert on these that it still engages (tests/test_fast_completion.py)."""

    def __init__(self) -> None:
        self.lists = 0  # lists completed in one loop
        self.objects = 0  # single objects completed in one pass
        self.errors = 0  # failures other than a value the ordinary path must report


FAST_PATH = FastPathCounts()
# What a value the fast path cannot complete raises (null in a non-null field, a value its scalar
# rejects): the ordinary path reports it. Anything else is a fault of the fast path itself.
_VALUE_ERRORS = (_Fallback, GraphQLError)


def _unexpected(error: Exception) -> None:
    """The ordinary path still answers; count it, and warn once per process (not per object)."""
    FAST_PATH.errors += 1
    if FAST_PATH.errors == 1:
        log.warning("fast completion failed; graphql-core's own completion answers", exc_info=error)


class PlainLeavesExecutionContext(StrawberryGraphQLCoreExecutionContext):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plans: dict[int, tuple[Any, list[_Plain]]] = {}

    def _plan(self, parent_type: GraphQLObjectType, grouped_field_set: Any) -> list[_Plain]:
        # collect_subfields memoizes one field set per list, so this runs once per list.
        cached = self._plans.get(id(grouped_field_set))
        if cached is not None:
            return cached[1]
        plan = self._build_plan(parent_type, grouped_field_set)
        self._plans[id(grouped_field_set)] = (grouped_field_set, plan)
        return plan

    def _build_plan(self, parent_type: GraphQLObjectType, grouped_field_set: Any) -> list[_Plain]:
        if getattr(self.middleware_manager, "middlewares", None):
            return _NOT_PLAIN
        plan: list[_Plain] = []
        for key, details in grouped_field_set.items():
            node = details[0].node
            field = parent_type.fields.get(node.name.value)
            resolve = getattr(field, "resolve", None)
            if resolve is None or node.arguments or not getattr(resolve, "_is_default", False):
                return _NOT_PLAIN
            try:
                serialize, non_null, is_list, items_non_null = _leaf_plan(field.type)
            except _Fallback:
                return _NOT_PLAIN
            if inspect.iscoroutinefunction(resolve):
                return _NOT_PLAIN
            plan.append(
                (key, _reader(field, resolve), serialize, non_null, is_list, items_non_null)
            )
        return plan

    def complete_iterable_value(
        self,
        item_type: GraphQLOutputType,
        field_details_list: Any,
        info: Any,
        path: Path,
        items: Iterable[Any],
        position_context: Any,
    ) -> Any:
        # A list of plain objects (a page of tasks, a batch's results) in one loop: the
        # per-item round through complete_value and its awaitable checks cost as much as the
        # completion itself.
        completed = self._complete_plain_list(item_type, field_details_list, path, items)
        if completed is not None:
            return completed
        return super().complete_iterable_value(
            item_type, field_details_list, info, path, items, position_context
        )

    def _complete_plain_list(
        self, item_type: GraphQLOutputType, field_details_list: Any, path: Path, items: Any
    ) -> list[Any] | None:
        """The completed list, or None for the ordinary path (which reports any error)."""
        items_non_null = isinstance(item_type, GraphQLNonNull)
        object_type = item_type.of_type if isinstance(item_type, GraphQLNonNull) else item_type
        if (
            not isinstance(object_type, GraphQLObjectType)
            or object_type.is_type_of is not None
            or not isinstance(items, list | tuple)
            or self.get_stream_usage(field_details_list, path)
        ):
            return None
        grouped_field_set, new_defer_usages, _ = self.collect_subfields(
            object_type, field_details_list
        )
        plan = self._plan(object_type, grouped_field_set) if not new_defer_usages else _NOT_PLAIN
        if not plan:
            return None
        try:
            completed = [
                _complete(plan, item) if item is not None else _null_item(items_non_null)
                for item in items
            ]
        except _VALUE_ERRORS:
            return None
        except Exception as error:
            _unexpected(error)
            return None
        FAST_PATH.lists += 1
        return completed

    def execute_collected_subfields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path,
        grouped_field_set: Any,
        new_defer_usages: Sequence[Any],
        position_context: Any,
    ) -> Any:
        plan = self._plan(parent_type, grouped_field_set) if not new_defer_usages else _NOT_PLAIN
        if plan:
            # On any failure the ordinary path below completes it and reports the error.
            try:
                completed = _complete(plan, source_value)
            except _VALUE_ERRORS:
                pass
            except Exception as error:
                _unexpected(error)
            else:
                FAST_PATH.objects += 1
                return completed
        return super().execute_collected_subfields(
            parent_type, source_value, path, grouped_field_set, new_defer_usages, position_context
        )


def _null_item(non_null: bool) -> Any:
    """A null list item: null, unless the list's items are non-null (then an error)."""
    if non_null:
        raise _Fallback
    return None


def _complete(plan: list[_Plain], source: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, read, serialize, non_null, is_list, items_non_null in plan:
        value = read(source)
        if value is None:
            if non_null:
                raise _Fallback
            result[key] = None
        elif is_list:
            items = [None if item is None else serialize(item) for item in value]
            if items_non_null and None in items:
                raise _Fallback
            result[key] = items
        else:
            completed = serialize(value)
            if completed is None and non_null:
                raise _Fallback
            result[key] = completed
    return result
