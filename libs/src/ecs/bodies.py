"""The base of every operator request body: unknown fields refused, text a database can store, and
numbers that are numbers.

JSON's ``true`` and ``false`` are not numbers, but Python's ``bool`` is an ``int``: Pydantic takes
``"level": true`` for level 1 (I, red) and ``"quantity": true`` for one, even in strict mode for a
``Literal[1, 2, 3, 4]``. A client's slip would raise a live incident to the top level. Here a
boolean given for a field that does not take one is refused, naming the field.
"""

from __future__ import annotations

import types
from functools import cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def admits_bool(annotation: Any) -> bool:
    """Whether a field annotated ``annotation`` takes a JSON boolean: ``bool``, ``Any``, a Literal
    of True or False, or a union or Annotated holding one of those."""
    if annotation is bool or annotation is Any:
        return True
    origin = get_origin(annotation)
    if origin is Literal:
        return any(isinstance(a, bool) for a in get_args(annotation))
    if origin is Annotated:
        return admits_bool(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return any(admits_bool(a) for a in get_args(annotation))
    return False


@cache
def _must_have_text(model: type[BaseModel], field: str) -> bool:
    """Whether the field asks for at least one character (``min_length`` 1 or more): text that must
    say something, which blanks do not."""
    info = model.model_fields.get(field)
    return info is not None and any(isinstance(m, annotated_types.MinLen) and m.min_length >= 1 for m in info.metadata)


@cache
def _takes_bool(model: type[BaseModel], field: str) -> bool:
    info = model.model_fields.get(field)
    return info is None or admits_bool(info.annotation)


class RequestBody(BaseModel):
    """Base of a request body model: extra fields are refused (422 naming them), a string holding
    U+0000 is refused (PostgreSQL's text cannot hold it), and so is a boolean where the field
    wants a number or a name, and blanks alone (spaces, tabs, newlines) where the field asks for
    at least one character (a name, a reason)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name and not _takes_bool(cls, info.field_name):
            raise ValueError("must not be true or false here")
        return value

    @field_validator("*")
    @classmethod
    def _storable(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            if "\x00" in value:
                raise ValueError("must not hold U+0000")
            if value and value.isspace() and info.field_name and _must_have_text(cls, info.field_name):
                raise ValueError("must not be blank")
        return value


__all__ = ["RequestBody", "admits_bool"]
