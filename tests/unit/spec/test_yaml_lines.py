"""Line tracking, duplicate keys and syntax errors in spec YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from builder.spec.yaml_lines import SpecSyntaxError, line_for, load_yaml_with_lines

SPEC = """\
# host spec
name: web1
source_sync:
  host: src.example
  streams:
    - name: cl61
      every: 5min
    - name: lidar
      every: 10min
      paths:
        - /data/a
        - /data/b
flat: [1, 2]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "host.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_data_matches_safe_load(tmp_path: Path) -> None:
    data, _ = load_yaml_with_lines(_write(tmp_path, SPEC))
    assert data == yaml.safe_load(SPEC)


@pytest.mark.parametrize(
    ("key_path", "line"),
    [
        ((), 2),
        (("name",), 2),
        (("source_sync",), 3),
        (("source_sync", "host"), 4),
        (("source_sync", "streams"), 5),
        (("source_sync", "streams", 0), 6),
        (("source_sync", "streams", 0, "every"), 7),
        (("source_sync", "streams", 1), 8),
        (("source_sync", "streams", 1, "name"), 8),
        (("source_sync", "streams", 1, "every"), 9),
        (("source_sync", "streams", 1, "paths", 1), 12),
        (("flat", 1), 13),
    ],
)
def test_lines_of_keys_and_items(
    tmp_path: Path, key_path: tuple[str | int, ...], line: int
) -> None:
    _, lines = load_yaml_with_lines(_write(tmp_path, SPEC))
    assert lines[key_path] == line


def test_keys_keep_their_yaml_type(tmp_path: Path) -> None:
    _, lines = load_yaml_with_lines(_write(tmp_path, "ports:\n  22: ssh\n  '80': http\n"))
    assert lines[("ports", 22)] == 2
    assert lines[("ports", "80")] == 3


def test_anchors_and_merges_are_not_duplicates(tmp_path: Path) -> None:
    text = "base: &base\n  every: 5min\n  host: a\nstream:\n  <<: *base\n  every: 1h\n"
    data, lines = load_yaml_with_lines(_write(tmp_path, text))
    assert data["stream"] == {"every": "1h", "host": "a"}
    assert lines[("stream", "every")] == 6
    assert line_for(lines, ("stream", "host")) == 4  # merged: falls back to its mapping


def test_alias_items_point_at_the_alias(tmp_path: Path) -> None:
    text = "defaults: &d\n  every: 5min\nstreams:\n  - name: x\n  - *d\n"
    data, lines = load_yaml_with_lines(_write(tmp_path, text))
    assert data["streams"][1] == {"every": "5min"}
    assert lines[("defaults", "every")] == 2
    assert lines[("streams", 1)] == 5
    assert line_for(lines, ("streams", 1, "every")) == 5  # not the anchor's line 2


def test_recursive_alias_terminates(tmp_path: Path) -> None:
    data, lines = load_yaml_with_lines(_write(tmp_path, "a: &x\n  - *x\n"))
    assert data["a"][0] is data["a"]
    assert lines[("a", 0)] == 2


def test_empty_file(tmp_path: Path) -> None:
    assert load_yaml_with_lines(_write(tmp_path, "# nothing\n")) == (None, {})


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a: 1\nb: 2\na: 3\n", 3, "duplicate key 'a' (first defined on line 1)"),
        (SPEC + "name: web2\n", 14, "duplicate key 'name' (first defined on line 2)"),
        (
            "s:\n  - every: 5min\n    name: x\n    every: 6min\n",
            4,
            "duplicate key 'every' (first defined on line 2)",
        ),
        ("m: {x: 1, y: 2,\n    x: 3}\n", 2, "duplicate key 'x'"),
        ("p:\n  1: a\n  0x1: b\n", 3, "duplicate key 1"),  # same int, different spelling
    ],
)
def test_duplicate_keys_rejected(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SpecSyntaxError) as info:
        load_yaml_with_lines(path)
    assert info.value.line == line
    assert message in info.value.message
    assert str(info.value).startswith(f"{path}:{line}: duplicate key")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a: 1\nb: [1, 2\nc: 3\n", 3, "expected ',' or ']'"),
        ("a: 1\n b: 2\n", 2, "mapping values are not allowed here"),
        ("a:\n  - x\n  y: 1\n", 3, "expected <block end>"),
        ("a: 1\n\tb: 2\n", 2, "found character '\\t'"),
        ("a: *nope\n", 1, "found undefined alias 'nope'"),
        ("a: 1\n---\nb: 2\n", 2, "expected a single document"),
        ("a: !!python/object:os.system x\n", 1, "could not determine a constructor"),
        ("a: ok\nb: \x07\n", 2, "unacceptable character #x0007"),
    ],
)
def test_syntax_errors_name_the_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SpecSyntaxError) as info:
        load_yaml_with_lines(path)
    assert (info.value.path, info.value.line) == (path, line)
    assert message in info.value.message
    assert str(info.value) == f"{path}:{line}: {info.value.message}"


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "host.yaml"
    path.write_bytes(b"a: 1\nb: \xff\n")
    with pytest.raises(SpecSyntaxError, match=r":2: file is not valid UTF-8"):
        load_yaml_with_lines(path)


def test_line_for_uses_longest_known_prefix(tmp_path: Path) -> None:
    _, lines = load_yaml_with_lines(_write(tmp_path, SPEC))
    every = ("source_sync", "streams", 1, "every")
    assert line_for(lines, every) == 9
    # union member tag and a missing field: fall back to the enclosing item
    assert line_for(lines, ("source_sync", "streams", 1, "TimerStream", "every")) == 8
    assert line_for(lines, ["source_sync", "streams", 0, "missing"]) == 6
    assert line_for(lines, ("source_sync", "streams", 7)) == 5
    assert line_for(lines, ("unknown_top_level",)) == 2  # document start
    assert line_for(lines, ()) == 2
    assert line_for({}, ("a", 0)) is None
