"""Every mistake of a spec as one line each: file, line, key path, what and the fix.

pydantic reports all validation errors of a document at once; this module
turns each into a ``SpecProblem`` with the line it stands on (builder.spec.yaml_lines)
and, for a misspelt key, the nearest real key of that section (difflib). It
reads the model's structure but never decides a value, so it is not an image
input (builder.image.inputs): changing a message does not change any tag.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from builder.errors import SpecError, SpecProblem
from builder.spec.credcheck import secret_in
from builder.spec.yaml_lines import KeyPath, line_for

REFERENCE = "docs/reference/spec.md"
_SHOWN_INPUT = 60  # longer inputs are not repeated in the message


def format_loc(loc: Sequence[str | int]) -> str:
    """``("source_sync", "streams", 1, "every")`` -> ``source_sync.streams[1].every``."""
    text = ""
    for part in loc:
        if isinstance(part, str) and not part.isprintable():
            part = repr(part)  # a key with a newline must not split the one-line message
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def model_loc(loc: Sequence[str | int]) -> KeyPath:
    """Drop pydantic's internal location parts (union branches, validator names)."""
    return tuple(p for p in loc if isinstance(p, int) or not ("[" in p or p.startswith("function")))


def _candidates(tp: Any) -> list[Any]:
    """The types a field may hold: Annotated and unions unwrapped."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _candidates(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [t for arg in get_args(tp) for t in _candidates(arg)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _step(tp: Any, part: str | int) -> Any:
    for t in _candidates(tp):
        origin = get_origin(t)
        if isinstance(part, int) and origin is list:
            return get_args(t)[0]
        if isinstance(part, str) and _is_model(t) and part in t.model_fields:
            return t.model_fields[part].annotation
        if isinstance(part, str) and origin is dict:
            return get_args(t)[1]
    return None


def keys_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The keys the section at ``loc`` accepts (empty when it is not a section)."""
    tp: Any = model
    for part in loc:
        tp = _step(tp, part)
        if tp is None:
            return []
    return [name for t in _candidates(tp) if _is_model(t) for name in t.model_fields]


def did_you_mean(word: str, keys: Sequence[str]) -> str | None:
    """The key ``word`` was most likely meant to be, if one is close enough."""
    close = difflib.get_close_matches(word, keys, n=1, cutoff=0.6)
    if not close:  # a prefix or a dropped underscore: "mirror" for "mirror_verify"
        close = [k for k in keys if k.replace("_", "").startswith(word.replace("_", ""))][:1]
    return close[0] if close else None


def _message(error: Mapping[str, Any], loc: KeyPath, model: type[BaseModel]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        key = loc[-1] if loc else ""
        guess = did_you_mean(str(key), keys_at(model, loc[:-1])) if isinstance(key, str) else None
        if guess:
            return f"unknown key: did you mean '{guess}'? (keys: {REFERENCE})"
        return f"unknown key (check its spelling against {REFERENCE})"
    if kind == "missing":
        return f"required key is missing: add it (see {REFERENCE})"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, str) and secret_in(value):
        value = None  # a refusal never repeats a secret
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        shown = repr(value)
        if len(shown) <= _SHOWN_INPUT and shown not in message:
            message += f" (got {shown})"
    return message


def problems(
    path: Path, lines: Mapping[KeyPath, int], exc: ValidationError, model: type[BaseModel]
) -> list[SpecProblem]:
    """One problem per distinct error of ``exc``, in the order they stand in the file."""
    found: dict[tuple[int, str, str], SpecProblem] = {}
    for error in exc.errors():
        loc = model_loc(tuple(error["loc"]))
        line = line_for(dict(lines), loc) or 1
        problem = SpecProblem(str(path), line, format_loc(loc), _message(error, loc, model))
        found.setdefault((line, problem.key, problem.message), problem)
    return sorted(found.values(), key=lambda p: (p.line, p.key))


def spec_error(
    path: Path, lines: Mapping[KeyPath, int], exc: ValidationError, model: type[BaseModel]
) -> SpecError:
    """The SpecError for a failed validation, listing every problem."""
    return SpecError("", problems(path, lines, exc, model))
