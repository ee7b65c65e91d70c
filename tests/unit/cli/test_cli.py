"""Conventions operators know: --version, --debug anywhere, --os-cloud, completion,
every spec error at once (text and JSON), and the spec's JSON Schema.

Completion is exercised in a real bash: the generated script is sourced and
its function called with COMP_WORDS as bash would set them. The schema is
checked with a real JSON Schema validator against the shipped specs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from builder.cli.completion import bash_script, commands
from builder.cli.main import build_parser, main
from builder.spec import schema as spec_schema
from tests.fake_images import make_image
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
SPEC = REPO / "hosts" / "aurora.yml"
JASMIN = REPO / "hosts" / "aurora-jasmin.yml"
CLI = [sys.executable, "-m", "builder.cli.main"]


def run(*argv: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=60, cwd=REPO, **kw)


# -- --version, --debug, --os-cloud -----------------------------------------------


def test_version_prints_the_package_version() -> None:
    from importlib import metadata

    result = run("--version")
    assert result.returncode == 0
    assert result.stdout == f"aurora-image {metadata.version('aurora-image')}\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["--debug", "validate", "--spec", "/nowhere.yml"],
        ["validate", "--spec", "/nowhere.yml", "--debug"],
        ["validate", "--debug", "--spec", "/nowhere.yml"],
    ],
)
def test_debug_is_accepted_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.debug is True
    result = run(*argv)
    assert "Traceback (most recent call last)" in result.stderr
    assert "no such host spec" in result.stderr


def test_without_debug_an_error_is_one_line() -> None:
    result = run("validate", "--spec", "/nowhere.yml")
    assert result.returncode == 2
    assert result.stderr == (
        "aurora-image: /nowhere.yml: no such host spec (give an existing YAML file)\n"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--os-cloud", "jasmin", "releases"],
        ["releases", "--os-cloud", "jasmin"],
        ["releases", "--cloud", "jasmin"],
        ["--cloud", "jasmin", "promote", "2026.11-aaaaaaaaaaaa"],
        ["promote", "2026.11-aaaaaaaaaaaa", "--os-cloud=jasmin"],
        ["--os-cloud", "jasmin", "audit", "root@host", "--image", "live"],
        ["audit", "root@host", "--os-cloud", "jasmin"],
        ["--os-cloud", "jasmin", "status"],
    ],
)
def test_os_cloud_as_in_the_openstack_cli(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).cloud == "jasmin"


def test_no_cloud_flag_leaves_the_choice_to_os_cloud_and_the_spec() -> None:
    assert build_parser().parse_args(["releases"]).cloud is None


# -- spec errors, all at once ------------------------------------------------------

BROKEN = f"""\
base: {SPEC}
hostnmae: data.gamb2le.co.uk
dashboard:
  port: lots
  chekout: /opt/aurora
mirror_verfy: {{}}
source_sync:
  streams:
    - name: Bad_Name
      label: x
      description: x
      host: src
      path: /data
      dest: cl61
      patterns: ["*.nc"]
"""


def test_every_error_of_a_spec_in_one_run(tmp_path: Path) -> None:
    spec = tmp_path / "broken.yml"
    spec.write_text(BROKEN)
    result = run("validate", "--spec", str(spec))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines == [
        f"aurora-image: {spec}:2: hostnmae: unknown key: did you mean 'hostname'? "
        "(keys: docs/reference/spec.md)",
        f"aurora-image: {spec}:4: dashboard.port: Input should be a valid integer, "
        "unable to parse string as an integer (got 'lots')",
        f"aurora-image: {spec}:5: dashboard.chekout: unknown key: did you mean 'checkout'? "
        "(keys: docs/reference/spec.md)",
        f"aurora-image: {spec}:6: mirror_verfy: unknown key: did you mean 'mirror_verify'? "
        "(keys: docs/reference/spec.md)",
        f"aurora-image: {spec}:9: source_sync.streams[0].name: "
        "'Bad_Name' must be lower-case letters, digits and '-'",
    ]
    assert result.stdout == ""


def test_spec_errors_as_json(tmp_path: Path) -> None:
    spec = tmp_path / "broken.yml"
    spec.write_text(BROKEN)
    result = run("validate", "--json", "--spec", str(spec))
    assert result.returncode == 2
    out = json.loads(result.stdout)
    assert out["valid"] is False
    assert [(e["line"], e["key"]) for e in out["errors"]] == [
        (2, "hostnmae"),
        (4, "dashboard.port"),
        (5, "dashboard.chekout"),
        (6, "mirror_verfy"),
        (9, "source_sync.streams[0].name"),
    ]
    assert all(e["file"] == str(spec) for e in out["errors"])
    assert "did you mean 'checkout'" in out["errors"][2]["message"]


def test_a_valid_spec_as_json() -> None:
    result = run("validate", "--json", "--spec", str(SPEC))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["valid"] is True


def test_an_unknown_key_far_from_any_real_one_gets_no_guess(tmp_path: Path) -> None:
    spec = tmp_path / "odd.yml"
    spec.write_text(f"base: {SPEC}\nzzz: 1\n")
    result = run("validate", "--spec", str(spec))
    assert result.stderr == (
        f"aurora-image: {spec}:2: zzz: unknown key "
        "(check its spelling against docs/reference/spec.md)\n"
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("release: 1\n hostname: x\n", "check this line's indentation"),
        ("release: 1\n\thostname: x\n", "YAML indents with spaces only"),
        ("packages: [a, b\nrelease: 1\n", "list is not closed with ']'"),
        ('release: "1\n', "a quote is not closed"),
    ],
)
def test_yaml_syntax_errors_in_plain_words(tmp_path: Path, text: str, words: str) -> None:
    spec = tmp_path / "syntax.yml"
    spec.write_text(text)
    result = run("validate", "--spec", str(spec))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr and "(YAML: " in result.stderr


def test_every_duplicate_key_at_once(tmp_path: Path) -> None:
    spec = tmp_path / "dup.yml"
    spec.write_text(f"base: {SPEC}\nrelease: '1'\nrelease: '2'\nhostname: a\nhostname: b\n")
    result = run("validate", "--json", "--spec", str(spec))
    assert result.returncode == 2
    errors = json.loads(result.stdout)["errors"]
    assert [e["line"] for e in errors] == [3, 5]
    assert all("duplicate key" in e["message"] for e in errors)


# -- JSON Schema -----------------------------------------------------------------


def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(run("schema").stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("spec", [SPEC, JASMIN], ids=lambda p: p.name)
def test_the_shipped_specs_satisfy_the_schema(spec: Path) -> None:
    errors = list(_validator().iter_errors(yaml.safe_load(spec.read_text())))
    assert not errors, [e.message for e in errors]


def test_the_schema_catches_what_the_loader_catches() -> None:
    validator = _validator()
    data = yaml.safe_load(SPEC.read_text())
    typo = {**data, "hostnmae": "x"}
    assert any("hostnmae" in e.message for e in validator.iter_errors(typo))
    wrong_type = {**data, "dashboard": {**data["dashboard"], "port": "lots"}}
    assert any(list(e.path) == ["dashboard", "port"] for e in validator.iter_errors(wrong_type))
    missing = {k: v for k, v in data.items() if k != "hostname"}
    assert any("'hostname' is a required property" in e.message
               for e in validator.iter_errors(missing))  # fmt: skip
    # An overlay (base:) gives only what differs: nothing is required of it.
    assert not list(validator.iter_errors({"base": "aurora.yml", "release": "2026.12"}))
    assert list(validator.iter_errors({"base": "aurora.yml", "dashboard": {"port": "x"}}))


def test_committed_schema_is_current() -> None:
    assert spec_schema.PAGE.read_text() == spec_schema.schema_text(), (
        "docs/reference/spec.schema.json is stale: run `make docs`"
    )


def test_schema_out_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    assert main(["schema", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["title"] == "aurora-image host spec"


# -- bash completion ----------------------------------------------------------------


def _complete(script: Path, words: list[str], env: dict[str, str] | None = None) -> list[str]:
    """What bash offers for the last word of ``words`` (the line typed so far)."""
    line = " ".join(words)
    program = (
        f"source {script}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\nCOMP_LINE={line!r}\nCOMP_POINT={len(line)}\n"
        "_aurora_image\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [w for w in result.stdout.splitlines() if w]


@pytest.fixture
def script(tmp_path: Path) -> Path:
    result = run("completion", "bash")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "aurora-image.bash"
    path.write_text(result.stdout)
    return path


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_completion_offers_commands_options_and_values(script: Path, tmp_path: Path) -> None:
    assert set(_complete(script, ["aurora-image", "va"])) == {"validate"}
    assert {"status", "logs", "schema", "completion", "promote"} <= set(
        _complete(script, ["aurora-image", ""])
    )
    assert set(_complete(script, ["aurora-image", "--"])) >= {"--version", "--debug", "--os-cloud"}
    assert "--os-cloud" in _complete(script, ["aurora-image", "promote", "--os"])
    assert "--probe-timeout" in _complete(script, ["aurora-image", "promote", "--pro"])
    assert _complete(script, ["aurora-image", "secrets", ""]) == ["check"]
    assert _complete(script, ["aurora-image", "completion", ""]) == ["bash"]
    # Global options before the command are skipped with their values.
    assert _complete(script, ["aurora-image", "--os-cloud", "x", "secrets", "c"]) == ["check"]
    # Paths for path options.
    (tmp_path / "myspec.yml").write_text("")
    assert _complete(script, ["aurora-image", "validate", "--spec", f"{tmp_path}/mysp"]) == [
        f"{tmp_path}/myspec.yml"
    ]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_completion_offers_the_stored_image_tags(script: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_image(store, "2026.11-aaaaaaaaaaaa", built_at=1.0)
    make_image(store, "2026.11-bbbbbbbbbbbb", built_at=2.0)
    # COMP_WORDS[0] is what the operator typed; here a wrapper running this CLI.
    wrapper = tmp_path / "aurora-image"
    wrapper.write_text(f'#!/bin/sh\ncd {REPO} && exec {sys.executable} -m builder.cli.main "$@"\n')
    wrapper.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "AURORA_IMAGES": str(store)}
    tags = _complete(script, [str(wrapper), "promote", "2026"], env)
    assert tags == ["2026.11-bbbbbbbbbbbb", "2026.11-aaaaaaaaaaaa"]
    assert _complete(script, [str(wrapper), "diff", "2026.11-aaaaaaaaaaaa", "2026.11-b"], env) == [
        "2026.11-bbbbbbbbbbbb"
    ]
    assert _complete(script, [str(wrapper), "prune", "--live", "2026.11-a"], env) == [
        "2026.11-aaaaaaaaaaaa"
    ]


def test_completion_covers_every_command_and_option() -> None:
    """Generated from the parser: nothing can be left out by hand."""
    text = bash_script(build_parser())
    _, subs = commands(build_parser())
    for command in subs:
        assert f"        {command.name}) opts=" in text
        for option in command.options:
            assert option in text


# -- the serial console bridge ------------------------------------------------------
# The real console (QEMU's socket, the guest's getty) is exercised by
# tests/vm/test_vm_command.py; here only what the bridge itself decides.


def test_console_of_a_vm_that_is_gone_is_one_clear_error(tmp_path: Path) -> None:
    from builder.vm.console import ConsoleError, attach

    with pytest.raises(ConsoleError, match=r"cannot attach to the console .*console\.sock"):
        attach(tmp_path / "console.sock")


def test_console_bridges_bytes_and_leaves_on_ctrl_close_bracket(tmp_path: Path) -> None:
    import socket
    import threading

    from builder.vm.console import attach

    path = tmp_path / "console.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    got: list[bytes] = []

    def guest() -> None:
        conn, _ = server.accept()
        with conn:
            # The bridge may already have left (its keys were all there): what it
            # sent is still in this end's buffer, so read before writing.
            while data := conn.recv(1024):
                got.append(data)
            with contextlib.suppress(OSError):
                conn.sendall(b"aurora login: ")

    thread = threading.Thread(target=guest)
    thread.start()
    keys_r, keys_w = os.pipe()
    screen_r, screen_w = os.pipe()
    os.write(keys_w, b"root\r\x1dnever sent")
    ended = attach(path, stdin=keys_r, stdout=screen_w, banner="hello\n")
    thread.join(timeout=10)
    server.close()
    os.close(screen_w)
    shown = os.read(screen_r, 4096)
    assert ended == "detached"
    assert shown.startswith(b"hello\r\n")
    assert b"".join(got) == b"\rroot\r"  # the wake-up CR, then the keys up to Ctrl-]
    for fd in (keys_r, keys_w, screen_r):
        os.close(fd)


def test_console_shows_what_the_guest_prints_until_it_goes_away(tmp_path: Path) -> None:
    import socket
    import threading

    from builder.vm.console import attach

    path = tmp_path / "console.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def guest() -> None:
        conn, _ = server.accept()
        with conn:
            assert conn.recv(1) == b"\r"  # the wake-up
            conn.sendall(b"\r\ndata login: ")  # then the VM powers off

    thread = threading.Thread(target=guest)
    thread.start()
    keys_r, keys_w = os.pipe()  # nothing typed
    screen_r, screen_w = os.pipe()
    ended = attach(path, stdin=keys_r, stdout=screen_w)
    thread.join(timeout=10)
    server.close()
    os.close(screen_w)
    assert ended == "the VM went away"
    assert os.read(screen_r, 4096) == b"\r\ndata login: "
    for fd in (keys_r, keys_w, screen_r):
        os.close(fd)


def test_committed_command_reference_is_current() -> None:
    """docs/reference/commands.md is generated from the command table, like the parser
    and the completion script: every command and option is on it."""
    from builder.cli import reference as cli_reference

    page = cli_reference.render_page()
    assert cli_reference.PAGE.read_text() == page, (
        "docs/reference/commands.md is stale: run `make docs` (python -m builder.cli.reference)"
    )
    _, subs = commands(build_parser())
    for command in subs:
        assert f"\n### aurora-image {command.name}\n" in page
        assert f"| `aurora-image {command.name}" in page, f"{command.name} has no usage row"
        for option in command.options:
            assert option in {"-h", "--help"} or f"`{option}`" in page


def test_the_command_table_drives_parser_and_page() -> None:
    """One table: the parser has exactly its commands, in its order, each with a usage row."""
    from builder.cli.commands import COMMANDS

    _, subs = commands(build_parser())
    assert [c.name for c in subs] == [c.name for c in COMMANDS]
    assert all(c.usage for c in COMMANDS), [c.name for c in COMMANDS if not c.usage]
    for command in COMMANDS:
        assert all(u.split()[0] == command.name for u in command.usage), command.name


def test_make_targets_come_from_the_makefile_comments(tmp_path: Path) -> None:
    """The page's make table is what `make help` prints: the Makefile's `##` comments."""
    from builder.cli import reference as cli_reference

    makefile = tmp_path / "Makefile"
    makefile.write_text("all: x ## build it all\n\t@true\nhidden:\n\t@true\nup: ## go up\n")
    assert cli_reference.make_targets(makefile) == [("all", "build it all"), ("up", "go up")]
    page = cli_reference.render_page(makefile)
    assert "| `make all` | build it all |" in page and "make hidden" not in page
    help_out = subprocess.run(
        ["make", "--no-print-directory", "help"], capture_output=True, text=True, cwd=REPO
    )
    assert help_out.returncode == 0, help_out.stderr
    for target, what in cli_reference.make_targets():
        assert f"make {target:<10} {what}" in help_out.stdout
