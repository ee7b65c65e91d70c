"""The documentation site: it builds strictly, and it cannot fall behind the code.

The spec reference is generated from builder/spec/model.py (the command reference
from builder/cli/commands.py, tested in test_cli.py), so the committed page
must equal a fresh rendering; every key of the shipped specs, every
`aurora-image` subcommand and every `make` target must be findable in the docs.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.cli import reference as cli_reference
from builder.cli.main import build_parser
from builder.errors import SpecError
from builder.spec import reference as spec_reference
from builder.spec.model import Model, load_spec
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
DOCS = REPO / "docs"
SPECS = (REPO / "hosts" / "aurora.yml", REPO / "hosts" / "aurora-jasmin.yml")
# The same pattern `make help` lists targets by.
MAKE_HELP = re.compile(r"^([a-z]+):.*## ", re.MULTILINE)


def _docs_text() -> str:
    return "\n".join(p.read_text() for p in sorted(DOCS.rglob("*.md")))


def test_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    config = ["--config-file", str(REPO / "mkdocs.yml"), "--site-dir", str(site)]
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", *config],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    assert (site / "reference" / "spec" / "index.html").is_file()
    assert (site / "runbooks" / "failed-promotion" / "index.html").is_file()


def test_committed_spec_reference_is_current() -> None:
    committed = spec_reference.PAGE.read_text()
    assert committed == spec_reference.render_page(), (
        "docs/reference/spec.md is stale: run `make docs` (python -m builder.spec.reference)"
    )


@pytest.mark.parametrize("generator", [spec_reference, cli_reference], ids=["spec", "commands"])
def test_check_mode_reports_a_stale_page(generator: Any, tmp_path: Path, capsys) -> None:
    page = tmp_path / "page.md"
    page.write_text("# an old reference\n")
    assert generator.main(["--check", "--out", str(page)]) == 1
    assert "stale" in capsys.readouterr().err
    assert generator.main(["--out", str(page)]) == 0
    assert generator.main(["--check", "--out", str(page)]) == 0


def _key_paths(
    data: Any, documented: dict[str, spec_reference.Entry], prefix: str = ""
) -> set[str]:
    """Every spec key a YAML document uses, with list items written as `[]`.

    Free-form mappings (`environment`, `dashboard.static_dirs`) are values,
    not keys of the spec, so they are not descended into.
    """
    paths: set[str] = set()
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        paths.add(path)
        entry = documented.get(path)
        if entry is not None and entry.section is None:
            continue
        if isinstance(value, dict):
            paths |= _key_paths(value, documented, path)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    paths |= _key_paths(item, documented, f"{path}[]")
    return paths


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.name)
def test_every_key_of_the_shipped_specs_is_documented(spec_path: Path) -> None:
    documented = {e.path: e for e in spec_reference.entries()}
    page = spec_reference.PAGE.read_text()
    used = _key_paths(yaml.safe_load(spec_path.read_text()), documented)
    assert used, f"{spec_path} yielded no keys"
    missing = sorted(p for p in used if p not in documented or f"`{p}`" not in page)
    assert not missing, f"keys of {spec_path.name} missing from the spec reference: {missing}"


def test_every_documented_key_has_type_default_and_description() -> None:
    for entry in spec_reference.entries():
        assert entry.type and entry.default and entry.description, entry


def test_a_key_without_a_docstring_stops_the_generator() -> None:
    class Undocumented(Model):
        documented: int = 1
        """Has one."""
        bare: int = 2

    with pytest.raises(spec_reference.ReferenceError, match=r"Undocumented\.bare has no"):
        list(spec_reference._sections(Undocumented, "", "", []))


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    names: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                names.append(full)
                names += _subcommands(sub, full)
    return names


def test_every_subcommand_is_documented() -> None:
    commands = _subcommands(build_parser())
    assert {"validate", "build", "list"} <= set(commands)
    text = _docs_text()
    missing = [c for c in commands if f"aurora-image {c}" not in text]
    assert not missing, f"aurora-image commands not mentioned in docs/: {missing}"


def test_every_make_target_is_documented() -> None:
    targets = MAKE_HELP.findall((REPO / "Makefile").read_text())
    assert {"image", "smoke", "test", "docs"} <= set(targets)
    text = _docs_text()
    missing = [t for t in targets if f"make {t}" not in text]
    assert not missing, f"make targets not mentioned in docs/: {missing}"


def test_unknown_key_error_points_at_the_reference(tmp_path: Path) -> None:
    spec = tmp_path / "typo.yml"
    spec.write_text(f"base: {SPECS[0]}\nhostnmae: data.gamb2le.co.uk\n")
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    message = str(caught.value)
    assert f"{spec}:2: hostnmae: unknown key" in message
    reference = re.search(r"docs/\S+\.md", message)
    assert reference and (REPO / reference.group()).is_file(), message


def test_every_ansible_role_is_mapped() -> None:
    contract = (REPO / "tests" / "data" / "reference" / "CONTRACT.md").read_text()
    listed = re.search(r"\(roles ([^)]*)\)", contract)
    assert listed, "CONTRACT.md no longer lists the Ansible roles as '(roles a, b, ...)'"
    roles = [r.strip() for r in listed.group(1).split(",")]
    assert len(roles) >= 10
    mapping = (DOCS / "ansible-mapping.md").read_text()
    missing = [r for r in roles if f"| `{r}` |" not in mapping]
    assert not missing, f"Ansible roles without a row in docs/ansible-mapping.md: {missing}"


def test_no_fenced_code_inside_lists() -> None:
    """Python-Markdown (without plugins) renders an indented ``` fence as inline code."""
    indented = [
        f"{page.relative_to(REPO)}:{number}"
        for page in sorted(DOCS.rglob("*.md"))
        for number, line in enumerate(page.read_text().splitlines(), 1)
        if re.match(r"^\s+```", line)
    ]
    assert not indented, f"indented code fences (write them unindented): {indented}"


def test_documented_options_exist() -> None:
    """`aurora-image CMD ... --flag` in the docs names a flag CMD really has."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    used = re.findall(r"aurora-image ([a-z][a-z-]*)((?: +[^\s`|#)]+)*)", _docs_text())
    assert len(used) > 20
    wrong = set()
    for command, rest in used:
        sub = subparsers.choices.get(command)
        if sub is None:
            continue
        known = {option for action in sub._actions for option in action.option_strings}
        words = rest.split()
        ours = words[: words.index("--")] if "--" in words else words  # then CMD's own words
        flags = {word.split("=")[0] for word in ours if word.startswith("--")}
        wrong |= {f"aurora-image {command} {flag}" for flag in flags - known}
    assert not wrong, f"options the docs use that the CLI does not have: {sorted(wrong)}"
