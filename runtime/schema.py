"""``schemas/graph.schema.json``, generated from the pydantic models (never edited by hand).

The schema is the graph-file model plus, for every node type, its params model under an
``if type == X then params matches ...`` rule, so editors validate and autocomplete params too.
"""

from __future__ import annotations

import json
from typing import Any

from ah.runtime.graph_model import GraphFile
from ah.runtime.registry import NodeLoadError, NodeRegistry, default_registry

DIST = "automagik-hello"


def graph_schema(registry: NodeRegistry | None = None, *, builtin_only: bool = True) -> dict[str, Any]:
    reg = registry or default_registry()
    schema = GraphFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://automagik.dev/ah/graph.schema.json"
    rules: list[dict[str, Any]] = []
    names: list[str] = []
    defs = schema.setdefault("$defs", {})
    for name in reg.names():
        try:
            info = reg.get(name)
        except NodeLoadError:
            continue  # a broken plugin is reported by `ah nodes`; a broken built-in makes the schema stale
        if builtin_only and not info.origin.endswith(f"({DIST})"):
            continue
        names.append(info.name)
        params_schema = info.cls.params_model.model_json_schema()
        local: dict[str, Any] = params_schema.pop("$defs", {})
        # Two node types may use two different models of one name: the second gets its type's prefix.
        renames = {k: f"{info.name}.{k}" for k, v in local.items() if k in defs and defs[k] != v}
        for k, v in local.items():
            defs[renames.get(k, k)] = _rename_refs(v, renames)
        params_schema = _rename_refs(params_schema, renames)
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


def _rename_refs(value: Any, renames: dict[str, str]) -> Any:
    if isinstance(value, dict):
        out = {k: _rename_refs(v, renames) for k, v in value.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in renames:
            out["$ref"] = "#/$defs/" + renames[ref[8:]]
        return out
    if isinstance(value, list):
        return [_rename_refs(v, renames) for v in value]
    return value


def graph_schema_text(registry: NodeRegistry | None = None) -> str:
    return json.dumps(graph_schema(registry), indent=2, sort_keys=True) + "\n"
