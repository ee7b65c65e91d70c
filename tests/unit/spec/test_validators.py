"""String classes are written one way: a row of CHARSETS, checked by the loader and
carried into the JSON Schema an editor uses, so both refuse the same values."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from builder.errors import SpecError
from builder.spec.model import HostSpec, load_spec
from builder.spec.schema import schema
from tests.paths import REPO_ROOT

SPEC = REPO_ROOT / "hosts" / "aurora.yml"


def _types(tp: Any) -> Iterator[Any]:
    """A type and every type inside it (Annotated, unions, lists, mappings)."""
    yield tp
    for arg in get_args(tp):
        yield from _types(arg)


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
    seen.add(model)
    for field in model.model_fields.values():
        for tp in _types(field.annotation):
            if isinstance(tp, type) and issubclass(tp, BaseModel) and tp not in seen:
                _models(tp, seen)
    return seen


def _metadata(field: Any) -> Iterator[Any]:
    yield from field.metadata
    for tp in _types(field.annotation):
        if get_origin(tp) is Annotated:
            yield from tp.__metadata__
            for item in tp.__metadata__:
                yield from getattr(item, "metadata", [])


def test_no_field_declares_its_own_pattern() -> None:
    """A pattern lives in builder.spec.validators.CHARSETS, never beside a field."""
    own = [
        f"{model.__name__}.{name}"
        for model in _models(HostSpec, set())
        for name, field in model.model_fields.items()
        if any(getattr(item, "pattern", None) for item in _metadata(field))
    ]
    assert not own, f"fields with their own pattern (add a CHARSETS row instead): {own}"


# (key path, a value the spec must refuse): the string classes that were patterns beside
# their fields, and two that always were charset types.
BAD = [
    (("release",), "2026 11"),
    (("hostname",), "Bad_Host"),
    (("packages", 0), "Bad Package"),
    (("storage", "mode"), "999"),
    (("firewall", "allow", 0), "22/sctp"),
    (("debian", "mirror"), "http://deb.debian.org/debian/"),
    (("debian", "snapshot"), "2026-11-01"),
    (("dashboard", "requirements", 0), "bokeh>=3"),
    (("source_sync", "streams", 0, "name"), "Bad_Name"),
    (("secrets", 0, "mode"), "600"),
    (("secrets", 0, "name"), "Bad Name"),
    (("source_sync", "streams", 0, "host"), "host name"),
]


def _set(data: Any, key: tuple[str | int, ...], value: Any) -> None:
    for part in key[:-1]:
        data = data[part]
    data[key[-1]] = value


@pytest.mark.parametrize(("key", "value"), BAD, ids=lambda v: str(v))
def test_loader_and_editor_schema_refuse_the_same_value(
    tmp_path: Path, key: tuple[str | int, ...], value: str
) -> None:
    data = yaml.safe_load(SPEC.read_text())
    if key[0] == "debian":
        data["debian"] = {}
    _set(data, key, value)
    path = tmp_path / "spec.yml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    dotted = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in key).lstrip(".")
    assert [p.key for p in caught.value.problems] == [dotted]
    assert f"{value!r} must be " in caught.value.problems[0].message
    errors = jsonschema.Draft202012Validator(schema()).iter_errors(data)
    assert any(tuple(e.absolute_path) == key for e in errors), f"the schema accepts {value!r}"
