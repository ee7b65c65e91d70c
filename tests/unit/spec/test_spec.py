"""Spec validation: every kind of mistake is one line naming file, line, key and fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from builder.cli.main import main
from builder.errors import SpecError
from builder.spec.model import load_spec
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
SPEC = REPO / "hosts" / "aurora.yml"


def test_the_aurora_spec_is_valid() -> None:
    spec = load_spec(SPEC)
    assert spec.hostname == "data.gamb2le.co.uk"
    assert [s.name for s in spec.source_sync.streams] == [
        "cl61",
        "radar",
        "hatpro",
        "vaisalamet",
        "asfs-logger",
        "asfs-fast-sonic",
        "power",
        "wxcam",
    ]


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    text = SPEC.read_text()
    assert old in text, old
    path = tmp_path / "aurora.yml"
    path.write_text(text.replace(old, new, 1))
    (tmp_path / "app").mkdir(exist_ok=True)
    return path


def _line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(needle)


CASES = [
    # (old text, new text, key path in the message, words of the fix, line marker)
    ("  uid: 1000", "  uid: 1000\n  colour: blue", "user.colour", "unknown key", "colour: blue"),
    ("  port: 5006", "  port: lots", "dashboard.port", "integer", "port: lots"),
    ("  entry: app.py\n", "", None, None, None),
    ("      label: CL61\n", "", "source_sync.streams[0].label", "missing", "- name: cl61"),
    (
        "    every: 2min",
        "    every: fast",
        "source_sync.defaults.every",
        "time span",
        "every: fast",
    ),
    (
        "  keep_alive: 15s",
        "  keep_alive: 15 parsecs",
        "dashboard.keep_alive",
        "time span",
        "keep_alive:",
    ),
    (
        "    - name: radar",
        "    - name: cl61",
        "source_sync.streams",
        "duplicate stream name",
        "  streams:",
    ),
    (
        "  raw_root: /project/aurora/raw",
        "  raw_root: project/aurora/raw",
        "storage.raw_root",
        "absolute",
        "raw_root:",
    ),
    (
        "      dest: cl61",
        "      dest: ../cl61",
        "source_sync.streams[0].dest",
        "relative",
        "dest: ../cl61",
    ),
    (
        "  OPS_ALERT_TRANSPORT: auto",
        "  OPS_ALERT_SMTP_PASSWORD: hunter2",
        "environment.OPS_ALERT_SMTP_PASSWORD",
        "secret",
        "OPS_ALERT_SMTP_PASSWORD",
    ),
    ("  every: 2min", "  every: 2min\n    jitter: 45s", None, "duplicate key", "jitter: 30s"),
]


@pytest.mark.parametrize(("old", "new", "key", "words", "marker"), CASES)
def test_bad_spec_is_one_clear_line(tmp_path, old, new, key, words, marker) -> None:
    path = _broken(tmp_path, old, new)
    if key is None and words is None:
        load_spec(path)  # entry has a default: still valid
        return
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{_line_of(path, marker)}: "), message
    if key:
        assert f": {key}: " in message, message
    assert words in message, message


def test_calendar_values_are_checked(tmp_path) -> None:
    data = yaml.safe_load(SPEC.read_text())
    data["source_sync"]["defaults"] = {"every": "2min"}
    path = tmp_path / "spec.yml"
    path.write_text(yaml.safe_dump(data))
    load_spec(path)
    from builder.spec.model import Schedule

    with pytest.raises(ValueError, match="minute 61"):
        Schedule(calendar="*:61")
    assert Schedule(calendar="*:02/5").calendar == "*:02/5"


def test_cli_exits_2_and_writes_nothing(tmp_path, capsys) -> None:
    path = _broken(tmp_path, "  port: 5006", "  port: lots")
    out = tmp_path / "render"
    assert main(["render", "--spec", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert re.match(rf"^aurora-image: {re.escape(str(path))}:\d+: dashboard\.port: ", err), err
    assert not out.exists()


def test_missing_spec_file(tmp_path, capsys) -> None:
    assert main(["validate", "--spec", str(tmp_path / "nope.yml")]) == 2
    assert "no such host spec" in capsys.readouterr().err
