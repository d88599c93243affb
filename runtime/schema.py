"""``schemas/graph.schema.json``, generated from the pydantic models (never edited by hand).

The schema is the graph-file model plus, for every node type, its params model under an
``if type == X then params matches ...`` rule, so editors validate and autocomplete params too.
"""

from __future__ import annotations

import json
from typing import Any

from ah.runtime.graph_model import GraphFile
from ah.runtime.registry import NodeRegistry, default_registry

DIST = "automagik-hello"


def graph_schema(registry: NodeRegistry | None = None, *, builtin_only: bool = True) -> dict[str, Any]:
    reg = registry or default_registry()
    schema = GraphFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://automagik.dev/ah/graph.schema.json"
    rules: list[dict[str, Any]] = []
    names: list[str] = []
    defs = schema.setdefault("$defs", {})
    for info in reg:
        if builtin_only and not info.origin.endswith(f"({DIST})"):
            continue
        names.append(info.name)
        params_schema = info.cls.params_model.model_json_schema()
        for k, v in params_schema.pop("$defs", {}).items():
            defs.setdefault(k, v)
        params_schema["description"] = (info.cls.summary or params_schema.get("description", "")).strip()
        rules.append(
            {
                "if": {"properties": {"type": {"const": info.name}}, "required": ["type"]},
                "then": {"properties": {"params": params_schema}},
            }
        )
    node_spec = defs["NodeSpec"]
    node_spec["allOf"] = rules
    node_spec["properties"]["type"]["examples"] = names
    return schema


def graph_schema_text(registry: NodeRegistry | None = None) -> str:
    return json.dumps(graph_schema(registry), indent=2, sort_keys=True) + "\n"
