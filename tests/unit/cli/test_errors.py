"""The error tree drawn in builder/errors.py is the tree the code has.

Every public exception class defined anywhere in builder/ must be drawn, under
its real parent, in the module that defines it, with its second base (such as
TimeoutError) and its own exit code; and every one descends from the one root,
AuroraError, so the CLI prints it as one line. Private classes (`_NotReady`)
are control flow inside one module and never reach the operator.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re
from dataclasses import dataclass

import builder
from builder import errors
from builder.errors import EXIT_STATUS, AuroraError

# "│   ├── BootTimeout (TimeoutError)   builder/vm/errors.py", "AuroraError [exit 1]  ..."
LINE = re.compile(
    r"^(?P<indent>[│├└─ ]*)(?P<name>[A-Z]\w*)(?: \((?P<also>[\w, ]+)\))?"
    r"(?: \[exit (?P<exit>\d+)\])?\s+(?P<file>builder/\S+\.py)$"
)


@dataclass(frozen=True)
class Drawn:
    name: str
    parent: str | None
    also: frozenset[str]
    exit_code: int | None
    file: str


def drawing() -> dict[str, Drawn]:
    """The tree in errors.py's docstring: each class with its parent, by indentation."""
    doc = errors.__doc__ or ""
    block = doc.split("::\n", 1)[1].strip("\n").split("\n\n", 1)[0]
    drawn: dict[str, Drawn] = {}
    stack: list[str] = []
    for raw in block.splitlines():
        line = raw.removeprefix("    ")
        match = LINE.match(line)
        assert match, f"not a line of the tree: {raw!r}"
        depth = len(match["indent"]) // 4
        del stack[depth:]
        assert len(stack) == depth, f"{match['name']} is indented under nothing"
        also = frozenset(a.strip() for a in (match["also"] or "").split(",") if a.strip())
        code = int(match["exit"]) if match["exit"] else None
        drawn[match["name"]] = Drawn(
            match["name"], stack[-1] if stack else None, also, code, match["file"]
        )
        stack.append(match["name"])
    return drawn


def defined() -> dict[str, type[BaseException]]:
    """Every public exception class defined in a module of builder/."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(builder.__path__, "builder."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not name.startswith("_")
            ):
                assert name not in found, f"two error classes named {name}"
                found[name] = value
    return found


def _file(cls: type) -> str:
    module = cls.__module__
    path = module.replace(".", "/")
    spec = importlib.util.find_spec(module)
    return f"{path}/__init__.py" if spec and spec.submodule_search_locations else f"{path}.py"


def test_the_drawing_lists_every_error_class_and_nothing_else() -> None:
    drawn, classes = drawing(), defined()
    assert {"AuroraError", "SpecError", "MachineError", "ReleaseFailed"} <= set(drawn)
    missing = sorted(set(classes) - set(drawn))
    extra = sorted(set(drawn) - set(classes))
    assert not missing, f"error classes not drawn in builder/errors.py: {missing}"
    assert not extra, f"builder/errors.py draws classes that do not exist: {extra}"


def test_every_error_descends_from_the_one_root() -> None:
    strays = sorted(n for n, c in defined().items() if not issubclass(c, AuroraError))
    assert not strays, f"error classes outside AuroraError (the CLI shows a traceback): {strays}"


def test_each_class_is_drawn_under_its_parent_in_its_module() -> None:
    classes = defined()
    wrong = []
    for name, entry in drawing().items():
        cls = classes.get(name)
        if cls is None:
            continue
        ours = [b.__name__ for b in cls.__bases__ if b.__name__ in classes]
        others = {b.__name__ for b in cls.__bases__ if b.__name__ not in classes} - {"Exception"}
        if ours != ([entry.parent] if entry.parent else []):
            wrong.append(f"{name}: drawn under {entry.parent}, its bases are {ours}")
        if others != entry.also:
            wrong.append(f"{name}: drawn with ({', '.join(sorted(entry.also))}), has {others}")
        if _file(cls) != entry.file:
            wrong.append(f"{name}: drawn in {entry.file}, defined in {_file(cls)}")
    assert not wrong, "builder/errors.py's drawing is out of date:\n" + "\n".join(wrong)


def test_exit_codes_are_drawn_where_they_change_and_all_are_explained() -> None:
    classes, drawn = defined(), drawing()
    wrong = []
    for name, cls in classes.items():
        code = getattr(cls, "exit_code", None)
        if code is None:
            continue
        assert code in EXIT_STATUS, f"{name}.exit_code {code} is not in errors.EXIT_STATUS"
        parent_code = next(
            (getattr(b, "exit_code", None) for b in cls.__bases__ if hasattr(b, "exit_code")),
            None,
        )
        entry = drawn.get(name)
        shown = entry.exit_code if entry else None
        if code != parent_code and shown != code:
            wrong.append(f"{name}: exits {code}, drawn [exit {shown}]")
        if shown is not None and shown != code:
            wrong.append(f"{name}: drawn [exit {shown}], exits {code}")
    assert not wrong, "\n".join(wrong)


def test_the_drawing_reader_sees_a_misplaced_class() -> None:
    """The reader itself: a class indented under the wrong parent is caught."""
    tree = drawing()
    assert tree["SpecSyntaxError"].parent == "SpecError"
    assert tree["SpecError"].parent == "AuroraError"
    assert tree["AuroraError"].parent is None
    assert tree["BootTimeout"].also == {"TimeoutError"}
    assert tree["SpecError"].exit_code == 2
