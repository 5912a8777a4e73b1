"""Generate proto-schemas/ from the Pydantic message models in libs (ecs.contracts).

    python proto-schemas/generate.py           write the files
    python proto-schemas/generate.py --check   exit 1 if the files differ from the models

Writes one JSON Schema per message (json/<subject>.json, the envelope's data), the envelope's
schema (json/envelope.json) and an AsyncAPI 3.0 document (asyncapi.yaml)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from ecs.catalogue import ALL_MESSAGES as MESSAGES
from ecs.contracts import MessageSpec
from ecs.envelope import Envelope

HERE = Path(__file__).resolve().parent


def _name(spec: MessageSpec) -> str:
    return spec.subject.replace("{", "").replace("}", "")


def _schema(model: Any) -> dict[str, Any]:
    return model.model_json_schema(ref_template="#/$defs/{model}")


def render() -> dict[str, str]:
    files: dict[str, str] = {}
    envelope = _schema(Envelope)
    files["json/envelope.json"] = json.dumps(envelope, indent=2, sort_keys=True) + "\n"
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    components: dict[str, Any] = {"messages": {}, "schemas": {"Envelope": envelope}}
    for spec in MESSAGES:
        name = _name(spec)
        schema = _schema(spec.model)
        files[f"json/{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        key = name.replace(".", "_")
        components["schemas"][spec.model.__name__] = schema
        components["schemas"].update(schema.get("$defs", {}))
        if spec.enveloped:
            payload = {
                "allOf": [
                    {"$ref": "#/components/schemas/Envelope"},
                    {
                        "type": "object",
                        "properties": {
                            "type": {"const": spec.subject},
                            "data": {"$ref": f"#/components/schemas/{spec.model.__name__}"},
                        },
                    },
                ]
            }
            headers = {
                "type": "object",
                "properties": {
                    "Nats-Msg-Id": {"type": "string", "description": "the envelope id"},
                    "traceparent": {"type": "string", "description": "W3C trace context"},
                },
                "required": ["Nats-Msg-Id"],
            }
        else:
            payload = {"$ref": f"#/components/schemas/{spec.model.__name__}"}
            headers = {
                "type": "object",
                "properties": {"Nats-Msg-Id": {"type": "string", "description": "<gateway_id>:<alarm_id>"}},
                "required": ["Nats-Msg-Id"],
            }
        components["messages"][key] = {
            "name": spec.subject,
            "summary": spec.summary,
            "payload": payload,
            "headers": headers,
        }
        channel: dict[str, Any] = {"address": spec.subject, "messages": {key: {"$ref": f"#/components/messages/{key}"}}}
        params = [p.strip("{}") for p in spec.subject.split(".") if p.startswith("{")]
        if params:
            channel["parameters"] = {p: {"description": p.replace("_", " ")} for p in params}
        channels[key] = channel
        operations[f"publish_{key}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": f"{spec.publisher}: {spec.summary}",
            "messages": [{"$ref": f"#/channels/{key}/messages/{key}"}],
        }
    doc = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Emergency command system: messages on NATS JetStream",
            "version": "1.0.0",
            "description": "Generated from ecs.contracts by proto-schemas/generate.py; do not edit by hand.",
        },
        "defaultContentType": "application/json",
        "servers": {"local": {"host": "127.0.0.1:4222", "protocol": "nats"}},
        "channels": channels,
        "operations": operations,
        "components": _rewrite_refs(components),
    }
    files["asyncapi.yaml"] = yaml.safe_dump(doc, sort_keys=True, allow_unicode=True, width=120)
    return files


def _rewrite_refs(node: Any) -> Any:
    """Pydantic's local $defs become component schemas in the AsyncAPI document."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/"):
                out[k] = "#/components/schemas/" + v.removeprefix("#/$defs/")
            elif k == "$defs":
                continue
            else:
                out[k] = _rewrite_refs(v)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stale = [p for p, text in files.items() if not (HERE / p).exists() or (HERE / p).read_text() != text]
        extra = [
            str(p.relative_to(HERE)) for p in (HERE / "json").glob("*.json") if str(p.relative_to(HERE)) not in files
        ]
        if stale or extra:
            print("proto-schemas/ is out of date with ecs.contracts; run `make schemas`:", *stale, *extra, sep="\n  ")
            return 1
        print(f"proto-schemas/ matches the models ({len(files)} files)")
        return 0
    (HERE / "json").mkdir(exist_ok=True)
    for old in (HERE / "json").glob("*.json"):
        if str(old.relative_to(HERE)) not in files:
            old.unlink()
    for path, text in files.items():
        (HERE / path).write_text(text)
    print(f"wrote {len(files)} files under proto-schemas/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
