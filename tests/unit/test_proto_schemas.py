"""proto-schemas/ is generated from the Pydantic models; this fails when they drift apart."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

from ecs.contracts import CATEGORIES, STAGES, GatewayAlarm
from ecs.vocabulary import Category, Stage

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("proto_schemas_generate", ROOT / "proto-schemas" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_schemas_match_the_models():
    rendered = _generator().render()
    on_disk = {str(p.relative_to(ROOT / "proto-schemas")) for p in (ROOT / "proto-schemas" / "json").glob("*.json")}
    assert on_disk == {p for p in rendered if p.startswith("json/")}, "run `make schemas`"
    for path, text in rendered.items():
        assert (ROOT / "proto-schemas" / path).read_text() == text, (
            f"{path} drifted from ecs.contracts: run `make schemas`"
        )


def test_asyncapi_document_is_3_0_and_every_reference_resolves():
    doc = yaml.safe_load((ROOT / "proto-schemas" / "asyncapi.yaml").read_text())
    assert doc["asyncapi"] == "3.0.0"
    text = yaml.safe_dump(doc)
    for ref in set(re.findall(r"#/components/schemas/(\w+)", text)):
        assert ref in doc["components"]["schemas"], ref
    assert "alarm.in.{gateway_id}" in {c["address"] for c in doc["channels"].values()}


def test_the_gateway_contract_lists_every_category_of_the_vocabulary():
    schema = GatewayAlarm.model_json_schema()
    assert schema["properties"]["category"] == {"$ref": "#/$defs/Category"}
    assert schema["$defs"]["Category"]["enum"] == [c.value for c in Category]
    assert tuple(c.value for c in Category) == CATEGORIES
    assert tuple(s.value for s in Stage) == STAGES
