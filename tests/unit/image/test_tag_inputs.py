"""Every builder module a build runs is either an input of the tag (a change gives a
new tag) or says why it cannot change an image's bytes: a module that shaped the
bytes without being an input would let one tag name two images."""

from __future__ import annotations

import ast
from pathlib import Path

from builder.image.inputs import BUILDER_INPUTS, NOT_BUILDER_INPUTS
from tests.paths import REPO_ROOT

BUILDER = REPO_ROOT / "builder"


def _module_file(name: str) -> Path | None:
    path = REPO_ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").is_file() else None


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("builder"):
            assert node.module is not None
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if _module_file(f"{node.module}.{a.name}")}  # fmt: skip
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("builder")}
    return found


def _build_closure() -> set[str]:
    """builder/-relative files of every module builder.image.build imports, transitively."""
    seen: set[str] = set()
    todo = ["builder.image.build"]
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        todo += _imports(path)
    files = {_module_file(n) for n in seen}
    return {p.relative_to(BUILDER).as_posix() for p in files if p and p.name != "__init__.py"}


def test_every_module_the_build_runs_is_an_input_or_says_why_not() -> None:
    closure = _build_closure()
    assert "render/produce.py" in closure and "image/mkosi.py" in closure  # the walk works
    unaccounted = closure - set(BUILDER_INPUTS) - set(NOT_BUILDER_INPUTS)
    assert not unaccounted, (
        f"builder modules the build runs but the tag does not cover: {sorted(unaccounted)}; "
        "add each to BUILDER_INPUTS, or to NOT_BUILDER_INPUTS with why it cannot change the bytes"
    )


def test_the_two_tables_name_real_modules_once() -> None:
    assert not set(BUILDER_INPUTS) & set(NOT_BUILDER_INPUTS)
    for name in (*BUILDER_INPUTS, *NOT_BUILDER_INPUTS):
        assert (BUILDER / name).is_file(), name
