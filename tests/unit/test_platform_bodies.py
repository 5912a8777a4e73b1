"""Request bodies refuse a JSON boolean where a number (or a name) is wanted, in every service: a
client's ``"level": true`` used to raise a live incident to level I."""

from __future__ import annotations

import importlib
import inspect
from datetime import datetime
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
import pytest
from pydantic import BaseModel, Field, ValidationError

from ecs.bodies import RequestBody, admits_bool, min_length_of

SERVICE_APIS = [
    "incident_intake.api",
    "dispatch.api",
    "resource_stockpile.api",
    "shelter_registry.api",
    "public_notification.api",
]


def errors_of(model: type[BaseModel], data: dict[str, Any]) -> dict[tuple[Any, ...], str]:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return {tuple(e["loc"]): e["msg"] for e in exc.errors()}
    return {}


def test_the_level_true_that_raised_an_incident_to_level_one_is_refused_naming_level():
    from incident_intake.api import LevelChange

    assert errors_of(LevelChange, {"version": 3, "level": True, "reason": "typo"}) == {
        ("level",): "Value error, must not be true or false here"
    }
    assert errors_of(LevelChange, {"version": True, "level": 2, "reason": "typo"}) == {
        ("version",): "Value error, must not be true or false here"
    }
    assert LevelChange.model_validate({"version": 3, "level": 2, "reason": "more callers"}).level == 2


def request_body_fields() -> list[tuple[str, str]]:
    found = []
    for name in SERVICE_APIS:
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, RequestBody) and cls.__module__ == name and cls.model_fields:
                found += [
                    (f"{name}.{cls_name}", f)
                    for f, info in cls.model_fields.items()
                    if not admits_bool(info.annotation)
                ]
    return found


@pytest.mark.parametrize(("model", "field"), request_body_fields())
def test_no_field_of_any_request_body_takes_true_unless_it_is_a_flag(model, field):
    module, _, cls_name = model.rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    for value in (True, False):
        assert errors_of(cls, {field: value}).get((field,)) == "Value error, must not be true or false here"


def test_every_service_request_body_is_a_request_body():
    """The refusals hold only where the models share the base: no model an api module defines (its
    request bodies; responses are views') is a bare BaseModel."""
    bare = []
    for name in SERVICE_APIS:
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, BaseModel) and not issubclass(cls, RequestBody):
                bare.append(f"{name}.{cls_name}")
    assert bare == []


class Sample(RequestBody):
    version: int = Field(ge=1)
    level: Literal[1, 2, 3, 4]
    exercise: bool = False
    maybe: bool | None = None
    either: Literal[True, "auto"] = "auto"
    note: str = ""
    count: int | None = None
    anything: Any = None


def test_flags_still_take_booleans_and_numbers_do_not():
    ok = Sample.model_validate(
        {"version": 1, "level": 2, "exercise": True, "maybe": False, "either": True, "anything": True}
    )
    assert (ok.exercise, ok.maybe, ok.either, ok.anything) == (True, False, True, True)
    assert set(errors_of(Sample, {"version": 1, "level": 2, "count": False})) == {("count",)}
    assert set(errors_of(Sample, {"version": 1, "level": 2, "note": True})) == {("note",)}


def test_unknown_fields_and_u0000_are_refused_naming_the_field():
    assert errors_of(Sample, {"version": 1, "level": 2, "extra": 1}) == {("extra",): "Extra inputs are not permitted"}
    assert errors_of(Sample, {"version": 1, "level": 2, "note": "a\x00b"}) == {
        ("note",): "Value error, must not hold U+0000"
    }


def text_of(annotation: Any) -> Any:
    """``str`` for ``Annotated[str, ...]``, else the annotation."""
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def text_fields_that_must_say_something() -> list[tuple[str, str]]:
    """Every request body field of every service that asks for at least one character."""
    found = []
    for name in SERVICE_APIS:
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, RequestBody) and cls.__module__ == name:
                found += [
                    (f"{name}.{cls_name}", f)
                    for f, info in cls.model_fields.items()
                    if get_origin(info.annotation) is not list
                    and str in (info.annotation, *get_args(info.annotation), *map(text_of, get_args(info.annotation)))
                    and min_length_of(info.annotation, info.metadata) >= 1
                ]
    return found


def test_the_required_text_fields_are_many_and_include_the_names():
    fields = {f"{model.rsplit('.', 1)[1]}.{field}" for model, field in text_fields_that_must_say_something()}
    assert {"DepotIn.name", "ItemIn.name_zh", "ShelterIn.name_zh", "ChannelIn.name", "AlertIn.description_zh"} <= fields
    assert len(fields) >= 30, sorted(fields)


@pytest.mark.parametrize(("model", "field"), text_fields_that_must_say_something())
def test_a_required_text_of_blanks_alone_is_refused_naming_the_field(model, field):
    """A name or a reason of spaces, tabs or newlines says nothing: refused as if it were empty."""
    module, _, cls_name = model.rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    info = cls.model_fields[field]
    shortest = min_length_of(info.annotation, info.metadata)
    for blanks in (" ", "  \t", "\n\r\n", "\u3000"):  # U+3000: the ideographic space
        blanks = blanks * shortest
        assert errors_of(cls, {field: blanks}).get((field,)) == "Value error, must not be blank"


def test_text_with_something_in_it_keeps_its_blanks_and_an_optional_text_may_be_blank():
    class Named(RequestBody):
        name: str = Field(min_length=1)
        note: str = ""

    assert Named.model_validate({"name": " a ", "note": "  "}).model_dump() == {"name": " a ", "note": "  "}


@pytest.mark.parametrize("char", ["\x01", "\x07", "\x0b", "\x0c", "\x1b", "\x1f", "\ud800", "\ufffe", "\uffff"])
def test_a_character_xml_cannot_carry_is_refused_naming_the_field_even_inside_lists_and_objects(char):
    """Stored, it used to break the documents made from it later: a CAP alert with a BEL in its
    description was accepted as a draft and refused only at submit, as XML that is not well formed."""

    class Doc(RequestBody):
        note: str = ""
        tags: list[str] = []
        values: dict[str, str] = {}

    code = f"U+{ord(char):04X}"
    want = f"Value error, must not hold {code}, a character XML cannot carry"
    assert errors_of(Doc, {"note": f"a{char}b"}) == {("note",): want}
    assert errors_of(Doc, {"tags": ["ok", f"x{char}"]}) == {("tags",): want}
    assert errors_of(Doc, {"values": {f"k{char}": "v"}}) == {("values",): want}
    assert errors_of(Doc, {"values": {"k": char}}) == {("values",): want}


def test_tab_newline_and_carriage_return_and_other_scripts_are_text():
    class Doc(RequestBody):
        note: str = ""

    text = "第一行\t列\r\n第二行 — ünïcode 🚒 \u0085"
    assert Doc.model_validate({"note": text}).note == text


def test_an_alert_description_with_a_control_character_is_refused_when_drafted():
    from public_notification.api import AlertIn

    errors = errors_of(AlertIn, {"description_zh": "请立即撤离\x07"})
    assert errors == {("description_zh",): "Value error, must not hold U+0007, a character XML cannot carry"}


@pytest.mark.parametrize("given", ["١٢", "1_000", "  5 ", "0x10", "12abc", ""])
def test_a_stockpile_quantity_given_as_a_string_is_a_plain_number_or_refused(given):
    """Python's Decimal reads other scripts' digits, '_' separators and surrounding blanks: a
    reservation of "١٢" took 12 blankets."""
    from resource_stockpile.api import ReservationIn

    assert errors_of(ReservationIn, {"item": "blanket", "quantity": given}) == {
        ("quantity",): "Value error, must be a number such as 12 or 2.5"
    }


@pytest.mark.parametrize(("given", "taken"), [(12, 12), (2.5, 2.5), ("12", 12), ("2.5", 2.5), ("1e3", 1000)])
def test_a_stockpile_quantity_as_a_json_number_or_a_plain_numeric_string_is_taken(given, taken):
    from resource_stockpile.api import ReservationIn

    assert ReservationIn.model_validate({"item": "blanket", "quantity": given}).quantity == taken


@pytest.mark.parametrize(
    ("annotation", "takes"),
    [
        (bool, True),
        (Any, True),
        (bool | None, True),
        (int | bool, True),
        (Annotated[bool, Field(description="a flag")], True),
        (Annotated[bool | None, Field()] | None, True),
        (Literal[True, "auto"], True),
        (Literal[False], True),
        (int, False),
        (int | None, False),
        (str, False),
        (Annotated[int, Field(ge=1)], False),
        (Literal[1, 2, 3, 4], False),
        (Literal["a", "b"] | None, False),
        (list[bool], False),  # a list of flags is not a flag
        (dict[str, Any], False),
    ],
)
def test_which_annotations_take_a_json_boolean(annotation, takes):
    """bool, Any and Literals of True/False take one, also inside unions and Annotated; numbers,
    texts, Literals of numbers and containers do not (their items are another field's matter)."""
    assert admits_bool(annotation) is takes


@pytest.mark.parametrize(
    ("annotation", "metadata", "least"),
    [
        (str, [], 0),
        (str, [annotated_types.MinLen(3)], 3),
        (Annotated[str, Field(min_length=2)], [], 2),
        (Annotated[str, Field(min_length=2)] | None, [], 2),
        (Annotated[str, annotated_types.MinLen(4)] | None, [], 4),
        (Annotated[Annotated[str, Field(min_length=5)], Field(max_length=9)], [], 5),
        (str | None, [annotated_types.MinLen(1), annotated_types.MaxLen(9)], 1),
        (int | None, [], 0),
        (Annotated[Annotated[str, Field(min_length=6)] | None, Field(description="a name")], [], 6),
        (list[Annotated[str, Field(min_length=3)]], [], 0),  # its items' least length, not the field's
    ],
)
def test_the_least_length_of_a_text_field_is_found_wherever_it_is_declared(annotation, metadata, least):
    assert min_length_of(annotation, metadata) == least


class Timed(RequestBody):
    at: datetime | None = None
    times: list[datetime] = []


@pytest.mark.parametrize(
    "edge", ["0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00+00:30", "9999-12-31T23:59:59-05:00"]
)
def test_a_time_with_no_utc_equivalent_in_years_1_to_9999_is_refused_naming_the_field(edge):
    """Such a time was a 500 on every store: turning it into UTC overflows (stockpile's
    ``effective_at`` was the example)."""
    message = "Value error, must be a time whose UTC equivalent falls within years 1 to 9999"
    assert errors_of(Timed, {"at": edge}) == {("at",): message}
    assert errors_of(Timed, {"times": ["2026-01-01T00:00:00Z", edge]}) == {("times",): message}
    assert Timed.model_validate({"at": "0001-01-01T00:00:00Z", "times": ["9999-12-31T23:59:59+00:00"]}).at


def test_the_stockpile_documents_refuse_an_effective_at_out_of_utc_range():
    from resource_stockpile.api import AdjustmentIn, ReceiptIn, TransferIn

    for model in (ReceiptIn, AdjustmentIn, TransferIn):
        errors = errors_of(model, {"effective_at": "0001-01-01T00:00:00+14:00"})
        assert ("effective_at",) in errors, (model, errors)
