"""Helpers shared by the tests of the on-host programs in mkosi.extra."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ROOT / "mkosi.extra/usr/lib/aurora"


def program_path(name: str) -> Path:
    return PROGRAMS / name


def load_program(name: str) -> ModuleType:
    """Import an extension-less program (registered: its dataclasses need the module).

    Its directory goes first on sys.path, as when the host runs it, so the program
    imports the shared aurora_common beside it (tests.unit.programs.test_common
    checks that it is that module).
    """
    module_name = name.replace("-", "_")
    if module_name in sys.modules:
        return sys.modules[module_name]
    if str(PROGRAMS) not in sys.path:
        sys.path.insert(0, str(PROGRAMS))
    loader = importlib.machinery.SourceFileLoader(module_name, str(program_path(name)))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module
    loader.exec_module(module)
    return module


class ConfiguredRun:
    """A program run from `<config_dir>/<name>.json`, as the image runs it.

    Subclasses are dataclasses with `name`, `config_dir` and `config` fields and
    a `PROGRAM` class attribute.
    """

    PROGRAM: Path
    name: str
    config_dir: Path
    config: dict[str, Any]

    def write_config(self, **overrides: Any) -> Path:
        self.config.update(overrides)
        path = self.config_dir / f"{self.name}.json"
        path.write_text(json.dumps(self.config, indent=2))
        return path

    def run(
        self, *args: str, argv: list[str] | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = argv or [str(self.PROGRAM), "--config-dir", str(self.config_dir), self.name]
        return subprocess.run(
            [*cmd, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **(env or {})},
            check=False,
        )


Mutation = Callable[[dict[str, Any]], None]


def drop(key: str) -> Mutation:
    """A config change for the bad-config tests: remove a key."""
    return lambda config: config.pop(key)


def set_key(key: str, value: Any) -> Mutation:
    return lambda config: config.update({key: value})


def set_ssh(key: str, value: Any) -> Mutation:
    return lambda config: config["ssh"].update({key: value})
