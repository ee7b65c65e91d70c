"""The host spec's JSON Schema, so an editor checks a spec while it is typed.

Generated from the pydantic model (builder.spec.model), never written by hand. A
spec with `base:` is an overlay: it gives only what differs from its base, so
for it nothing is required (the same keys and types are still checked).
`aurora-image schema` prints it; docs/reference/spec.schema.json is the
committed copy editors point at (`make docs` refreshes it, a test keeps it so).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from builder.image.inputs import REPO
from builder.spec.model import HostSpec

PAGE = REPO / "docs" / "reference" / "spec.schema.json"
_OVERLAY = "Overlay"


def _without_required(node: Any) -> Any:
    """A copy of a schema in which no key is required and refs point at overlay defs."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "required":
                continue
            if key == "$ref" and isinstance(value, str):
                value = value.replace("#/$defs/", f"#/$defs/{_OVERLAY}")
            out[key] = _without_required(value)
        return out
    if isinstance(node, list):
        return [_without_required(item) for item in node]
    return node


def schema() -> dict[str, Any]:
    """The JSON Schema of a host spec file (a full spec, or an overlay with `base:`)."""
    full = HostSpec.model_json_schema()
    defs = full.pop("$defs", {})
    base = {
        "type": "string",
        "description": "Another spec file (relative to this one) this spec is applied over; "
        "mappings merge key by key, lists and scalars are replaced.",
    }
    full["properties"] = {"base": base, **full["properties"]}
    overlay = _without_required(copy.deepcopy(full))
    overlay["required"] = ["base"]
    all_defs = {**defs}
    all_defs.update({f"{_OVERLAY}{name}": _without_required(d) for name, d in defs.items()})
    all_defs["HostSpec"] = full
    all_defs[f"{_OVERLAY}HostSpec"] = overlay
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "aurora-image host spec",
        "description": "A host spec of aurora-image (hosts/*.yml); see docs/reference/spec.md.",
        "if": {"type": "object", "required": ["base"]},
        "then": {"$ref": f"#/$defs/{_OVERLAY}HostSpec"},
        "else": {"$ref": "#/$defs/HostSpec"},
        "$defs": all_defs,
    }


def schema_text() -> str:
    return json.dumps(schema(), indent=2, sort_keys=False) + "\n"
