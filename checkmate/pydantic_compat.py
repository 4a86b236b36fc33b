"""The one place that writes pydantic's private attributes: `trusted` builds models without
validation for the 10,000s of rows a page or a batch turns into models. It writes the four
attributes pydantic's own model_construct sets (__dict__, __pydantic_fields_set__,
__pydantic_extra__, __pydantic_private__), as read from pydantic 2.7 to 2.14; any other version
fails here at import, and tests/test_dependency_fences.py checks that such a model still equals,
dumps and copies like a validated one.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from checkmate.versions import require_tested

TESTED_RANGE = ("2.7", "2.15")
require_tested("pydantic", *TESTED_RANGE)

M = TypeVar("M", bound=BaseModel)
_new_object = object.__new__
_set_attr = object.__setattr__


def trusted(model: type[M], values: dict[str, Any], fields_set: set[str]) -> M:
    """A model from values already of its fields' types, without validation and without
    model_construct's per-field work: for the 10,000s of rows a page or a batch turns into
    models (validating cost more than the SQL). `values` must hold every field."""
    instance = _new_object(model)
    _set_attr(instance, "__dict__", values)
    _set_attr(instance, "__pydantic_fields_set__", fields_set)
    _set_attr(instance, "__pydantic_extra__", None)
    _set_attr(instance, "__pydantic_private__", None)
    return instance
