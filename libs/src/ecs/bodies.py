"""The base of every operator request body: unknown fields refused, text a database can store, and
numbers that are numbers.

JSON's ``true`` and ``false`` are not numbers, but Python's ``bool`` is an ``int``: Pydantic takes
``"level": true`` for level 1 (I, red) and ``"quantity": true`` for one, even in strict mode for a
``Literal[1, 2, 3, 4]``. A client's slip would raise a live incident to the top level. Here a
boolean given for a field that does not take one is refused, naming the field.
"""

from __future__ import annotations

import re
import types
from datetime import UTC, datetime
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


def min_length_of(annotation: Any, metadata: list[Any]) -> int:
    """The ``min_length`` a text field asks for, from its own constraints or those of its type
    (``Annotated[str, Field(min_length=1)] | None``); 0 for none."""
    found = [m.min_length for m in metadata if isinstance(m, annotated_types.MinLen)]
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *extra = get_args(annotation)
        nested = [m for e in extra for m in ([e, *getattr(e, "metadata", [])])]
        found.append(min_length_of(inner, nested))
    elif origin is Union or origin is types.UnionType:
        found += [min_length_of(a, []) for a in get_args(annotation)]
    return max(found, default=0)


@cache
def _must_have_text(model: type[BaseModel], field: str) -> bool:
    """Whether the field asks for at least one character (``min_length`` 1 or more): text that must
    say something, which blanks do not."""
    info = model.model_fields.get(field)
    return info is not None and min_length_of(info.annotation, info.metadata) >= 1


_NOT_IN_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
"""Characters XML 1.0 cannot carry (its production ``Char``, W3C XML 1.0 §2.2): the C0 controls but
tab, line feed and carriage return; lone surrogates; U+FFFE and U+FFFF."""


def _first_unwritable(value: Any) -> str | None:
    """The first character of ``value`` (a string, or the strings and keys of lists and objects in
    it) that no store and no XML document (CAP 1.2, EDXL-RM, PFIF) can carry; None if none."""
    if isinstance(value, str):
        found = _NOT_IN_XML.search(value)
        return found.group() if found else None
    if isinstance(value, dict):
        items: list[Any] = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple | set | frozenset):
        items = list(value)
    else:
        return None
    for item in items:
        char = _first_unwritable(item)
        if char is not None:
            return char
    return None


def _first_out_of_utc_range(value: Any) -> datetime | None:
    """The first time in ``value`` (a datetime, or one in lists and objects) that has no UTC
    equivalent within years 1 to 9999 (``0001-01-01T00:00:00+14:00``, ``9999-12-31T23:00:00-05:00``):
    turning it into UTC, as every store does, would overflow. None if none."""
    if isinstance(value, datetime):
        try:
            value.astimezone(UTC)
        except OverflowError:
            return value
        return None
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        for item in value:
            found = _first_out_of_utc_range(item)
            if found is not None:
                return found
    return None


@cache
def _takes_bool(model: type[BaseModel], field: str) -> bool:
    info = model.model_fields.get(field)
    return info is None or admits_bool(info.annotation)


class RequestBody(BaseModel):
    """Base of a request body model: extra fields are refused (422 naming them), a string holding
    U+0000 is refused (PostgreSQL's text cannot hold it), and so is one holding another character
    XML 1.0 cannot carry (a C0 control but tab, LF and CR; a lone surrogate; U+FFFE, U+FFFF),
    which would be stored and then break the CAP, EDXL-RM or PFIF document made from it. Refused
    too: a boolean where the field wants a number or a name, and blanks alone (spaces, tabs,
    newlines) where the field asks for at least one character (a name, a reason), and a time
    with no UTC equivalent within years 1 to 9999 (every store keeps UTC). Each refusal names
    the field (inside lists and objects too)."""

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
        char = _first_unwritable(value)
        if char == "\x00":
            raise ValueError("must not hold U+0000")
        if char is not None:
            raise ValueError(f"must not hold U+{ord(char):04X}, a character XML cannot carry")
        if _first_out_of_utc_range(value) is not None:
            raise ValueError("must be a time whose UTC equivalent falls within years 1 to 9999")
        blank = isinstance(value, str) and value != "" and value.isspace()
        if blank and info.field_name and _must_have_text(cls, info.field_name):
            raise ValueError("must not be blank")
        return value


__all__ = ["RequestBody", "admits_bool", "min_length_of"]
