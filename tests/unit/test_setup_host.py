"""`make setup` installs every program the build and the tests run.

scripts/setup-host.sh holds a table: program (or file) -> Debian package. The
code is scanned for the programs it starts (subprocess calls and
``shutil.which``), reading argv[0] where the code spells it: a literal, a module
constant, a local list, or the list an argv-building function returns. A
program found there must be in the table, unless an Essential package provides
it (every Debian root has those). Each row must be true on this host: what it
names is installed and comes from the package it names, so a wrong package
name fails here rather than on a pristine machine. Programs from the venv
(``sys.executable``, gunicorn, glance-manage) come from `uv sync`, not apt.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from tests.unit.image.test_tag_inputs import _build_closure

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup-host.sh"
# Where host-side code lives: the builder, the tests (they run here), bench, and
# the on-host programs (their unit tests run them here against real sshd/rsync).
SCANNED = ("builder", "tests", "bench")
PROGRAMS_DIR = REPO / "mkosi.extra" / "usr" / "lib" / "aurora"
# Installed by setup-host.sh itself, not from a Debian package.
NOT_FROM_APT = {"uv": "setup-host.sh installs it into $AURORA_CACHE/uvboot"}
SPAWNERS = {"run", "Popen", "call", "check_call", "check_output", "create_subprocess_exec"}
PROGRAM_NAME = re.compile(r"^/?[A-Za-z0-9_.+/-]*[A-Za-z0-9]$")


def table() -> list[tuple[str, str]]:
    """The setup script's rows: (program or file, or "-", package)."""
    block = re.search(r"^programs='\n(.*?)^'", SETUP.read_text(), re.S | re.M)
    assert block, f"{SETUP}: no programs='...' table"
    rows = []
    for line in block.group(1).splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2:
            rows.append((fields[0], fields[1]))
    return rows


def _sources() -> Iterator[Path]:
    for folder in SCANNED:
        yield from sorted((REPO / folder).rglob("*.py"))
    for path in sorted(PROGRAMS_DIR.iterdir()):
        python = path.suffix == ".py"  # the programs' shared module (aurora_common.py)
        if path.is_file() and (
            python or path.read_text(errors="replace").startswith("#!/usr/bin/python3")
        ):
            yield path


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "..." and NAME = Path("...")."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "Path":
            value = value.args[0] if value.args else value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            found.update({t.id: value.value for t in targets if isinstance(t, ast.Name)})
    return found


class _Scan:
    """argv[0] of every process the scanned code starts, where it can be read."""

    def __init__(self) -> None:
        self.trees = {p: ast.parse(p.read_text(), str(p)) for p in _sources()}
        self.constants: dict[str, set[str]] = {}
        self.functions: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
        for tree in self.trees.values():
            for name, value in _constants(tree).items():
                self.constants.setdefault(name, set()).add(value)
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    self.functions.setdefault(node.name, []).append(node)
        self.used: dict[str, set[str]] = {}

    def _first(
        self, expr: ast.AST | None, scope: ast.AST, local: dict[str, str], depth: int
    ) -> set[str]:
        """What an argv expression's first element can be."""
        if expr is None or depth > 4:
            return set()
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return {expr.value}
        if isinstance(expr, ast.List | ast.Tuple):
            return self._first(expr.elts[0], scope, local, depth + 1) if expr.elts else set()
        if isinstance(expr, ast.Starred):
            return self._first(expr.value, scope, local, depth + 1)
        if isinstance(expr, ast.Name):
            if expr.id in local:
                return {local[expr.id]}
            found: set[str] = set()
            for node in ast.walk(scope):
                if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == expr.id for t in node.targets
                ):
                    found |= self._first(node.value, scope, local, depth + 1)
            return found or set(self.constants.get(expr.id, ()))
        if isinstance(expr, ast.Attribute) and expr.attr.isupper():
            return set(self.constants.get(expr.attr, ()))
        if isinstance(expr, ast.Call):
            name = getattr(expr.func, "id", None) or getattr(expr.func, "attr", None)
            if name in ("str", "Path") and expr.args:
                return self._first(expr.args[0], scope, local, depth + 1)
            found = set()
            for func in self.functions.get(name or "", []):
                for node in ast.walk(func):
                    if isinstance(node, ast.Return):
                        found |= self._first(node.value, func, local, depth + 1)
            return found
        return set()

    def run(self) -> dict[str, set[str]]:
        for path, tree in self.trees.items():
            local = _constants(tree)
            spawners = {
                alias.asname or alias.name
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module == "subprocess"
                for alias in node.names
                if alias.name in SPAWNERS
            }
            scopes: dict[ast.AST, ast.AST] = {}
            for func in ast.walk(tree):
                if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                    for node in ast.walk(func):
                        scopes[node] = func  # the innermost function wins: walked last
            for call in ast.walk(tree):
                if isinstance(call, ast.Call) and call.args:
                    self._call(path, call, scopes.get(call, tree), local, spawners)
        return self.used

    def _call(self, path: Path, call: ast.Call, scope: ast.AST, local: dict[str, str],
              spawners: set[str]) -> None:  # fmt: skip
        func = call.func
        if isinstance(func, ast.Attribute):
            owner = getattr(func.value, "id", None)
            is_which = func.attr == "which" and owner == "shutil"
            spawns = func.attr in SPAWNERS and owner in ("subprocess", "asyncio")
        else:
            is_which = False
            spawns = isinstance(func, ast.Name) and func.id in spawners
        if not (is_which or spawns):
            return
        where = f"{path.relative_to(REPO)}:{call.lineno}"
        for program in self._first(call.args[0], scope, local, 0):
            if PROGRAM_NAME.match(program) and not program.startswith("-"):
                self.used.setdefault(program, set()).add(where)


@cache
def used_programs() -> dict[str, set[str]]:
    return _Scan().run()


@cache
def _package_of(path: str) -> str | None:
    """The installed package that ships `path` (merged /usr: also as /bin, /sbin)."""
    candidates = [path]
    for merged in ("/usr/bin/", "/usr/sbin/"):
        if path.startswith(merged):
            candidates.append(path.removeprefix("/usr"))
    for candidate in candidates:
        done = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        owners = [line for line in done.stdout.splitlines() if not line.startswith("diversion")]
        if done.returncode == 0 and owners:
            return owners[0].split(":", 1)[0].strip()
    return None


def _essential(package: str) -> bool:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Essential}", package], capture_output=True, text=True
    )
    return done.stdout.strip() == "yes"


# Where Debian packages put programs: one found only in /usr/local or a pyenv
# shim would work here and be missing on a fresh machine.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _resolve(program: str) -> str | None:
    if program.startswith("/"):
        return program if Path(program).exists() else None
    return shutil.which(program, path=SYSTEM_PATH)


def test_the_scan_sees_the_programs_we_know_of() -> None:
    """Guards the scanner itself: each way the code spells argv[0] is read."""
    used = used_programs()
    names = {Path(program).name for program in used}
    for program in ("sshd", "nginx", "rsync", "qemu-img", "qemu-system-x86_64", "ssh"):
        assert program in names, f"scan missed {program}"
    assert any(w.startswith("mkosi.extra/") for w in used["rsync"])  # an on-host program
    assert "/usr/share/OVMF/OVMF_CODE_4M.fd" not in used  # files are not programs


def test_every_program_the_code_runs_is_installed_by_setup() -> None:
    listed = {Path(used).name for used, _ in table()}
    problems = []
    for program, where in sorted(used_programs().items()):
        name = Path(program).name
        if name in listed or name in NOT_FROM_APT:
            continue
        path = _resolve(program)
        package = _package_of(path) if path else None
        if package and _essential(package):
            continue
        problems.append(
            f"{name} (run at {', '.join(sorted(where)[:3])}): add it and its package to the "
            f"programs table of {SETUP.relative_to(REPO)}"
            + (f" (here it comes from {package})" if package else "")
        )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("row", table(), ids=lambda r: f"{r[0]}={r[1]}")
def test_each_row_of_the_table_is_true_here(row: tuple[str, str]) -> None:
    used, package = row
    if used == "-":
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
        ).stdout
        assert status.endswith("ok installed"), f"{package} not installed: run `make setup`"
        return
    path = _resolve(used)
    assert path, f"{used} not found: run `make setup` (it installs {package})"
    real = str(Path(path).resolve())
    owner = _package_of(path) or _package_of(real)
    assert owner == package, f"{used} ({path}) comes from {owner}, not {package}: fix the table"


def test_the_setup_script_parses() -> None:
    """The program table is one single-quoted string: an apostrophe in a row's note
    would end it and stop `make setup` (and so `make image`) with a syntax error."""
    done = subprocess.run(["sh", "-n", str(SETUP)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def marks() -> dict[str, str]:
    """Each row's program (its name) -> what needs it: "image" or "test"."""
    block = re.search(r"^programs='\n(.*?)^'", SETUP.read_text(), re.S | re.M)
    assert block
    found = {}
    for line in block.group(1).splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2:
            assert len(fields) >= 3, f"{SETUP.name}: row {line!r} says neither image nor test"
            found[Path(fields[0]).name] = fields[2]
    return found


def test_make_image_installs_every_program_the_build_runs() -> None:
    """`make image` installs only the rows marked image (a fresh machine's first build
    fetches no QEMU, browser or nginx), so every program a module of the build runs
    (builder.image.build and what it imports) must be on such a row."""
    rows = marks()
    assert set(rows.values()) == {"image", "test"}
    build = {f"builder/{name}" for name in _build_closure()}
    seen, wrong = set(), []
    for program, where in sorted(used_programs().items()):
        files = {w.rsplit(":", 1)[0] for w in where}
        if not files & build:
            continue
        seen.add(Path(program).name)
        if rows.get(Path(program).name, "image") != "image":
            wrong.append(f"{program} (run at {', '.join(sorted(files & build))})")
    assert {"git", "dpkg-deb"} <= seen, seen  # the walk and the scan work
    assert not wrong, f"mark these rows of {SETUP.name} image, not test: {wrong}"
