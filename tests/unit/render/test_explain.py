"""`aurora-image explain`: every annotated line names the spec key that set it."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest

from builder.cli.main import main
from builder.render import explain
from builder.render.engine import render
from builder.spec.model import load_spec
from builder.spec.yaml_lines import load_yaml_with_lines
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
SPEC = REPO / "hosts" / "aurora.yml"


@pytest.fixture(scope="module")
def spec_lines() -> tuple[dict, dict]:
    return load_yaml_with_lines(SPEC)


@functools.cache
def explained(name: str, spec_path: Path = SPEC) -> explain.Explanation:
    """Each file once per run: confirming a source renders the spec again."""
    spec = load_spec(spec_path)
    return explain.explain(spec, render(spec), name, root=spec_path.parent)


def sources_of(result: explain.Explanation, prefix: str) -> list[explain.Source]:
    [line] = [line for line in result.lines if line.text.startswith(prefix)]
    return list(line.sources)


def test_timer_lines_name_their_keys(spec_lines: tuple[dict, dict]) -> None:
    data, lines = spec_lines
    index = next(i for i, s in enumerate(data["source_sync"]["streams"]) if s["name"] == "cl61")
    result = explained("aurora-cl61-source-sync.timer")
    assert result.producer == "units/timer.j2"
    assert f"source_sync.streams[{index}].name" in result.keys
    expected = {
        "Description=": ("source_sync", "streams", index, "label"),
        "OnUnitActiveSec=": ("source_sync", "defaults", "every"),
        "RandomizedDelaySec=": ("source_sync", "defaults", "jitter"),
        "Persistent=": ("source_sync", "defaults", "persistent"),
        "Unit=": ("source_sync", "streams", index, "name"),
    }
    for prefix, key in expected.items():
        [source] = sources_of(result, prefix)
        assert source.key_text == explain.format_key(key), prefix
        assert (source.file, source.line) == ("aurora.yml", lines[key]), prefix
    # The template's own lines have no source.
    assert sources_of(result, "WantedBy=") == []


def test_every_rendered_file_carries_its_record() -> None:
    """explain reads the record render made; no file is left to guessing."""
    tree = render(load_spec(SPEC))
    assert all(entry.provenance is not None for entry in tree.values())
    record = tree["/etc/systemd/system/aurora-dashboard.service"].provenance
    assert record is not None and record.producer == "units/dashboard.service.j2"
    assert record.unit == "aurora-dashboard.service"


def test_values_come_only_from_the_named_item() -> None:
    """Streams share defaults; a stream's unit never cites a sibling stream."""
    result = explained("aurora-radar-source-sync.service")
    [item] = {k for k in result.keys if k.startswith("source_sync.streams[")}
    for line in result.lines:
        for source in line.sources:
            text = source.key_text
            assert not text.startswith("source_sync.streams[") or text.startswith(item)


def test_template_prefix_is_not_pinned_on_the_user_name() -> None:
    [source] = sources_of(explained("aurora-dashboard"), "User=")
    assert source.key_text == "dashboard.user"  # Panel's own user (issue 13)
    assert sources_of(explained("aurora-dashboard"), "EnvironmentFile=") == []


def test_defaults_are_labelled() -> None:
    result = explained("/etc/aurora/source-sync/cl61.json")
    [source] = sources_of(result, '  "max_delete"')
    assert source.file is None and source.label().startswith("(default) ")


def test_overlay_keys_point_at_the_overlay(tmp_path: Path) -> None:
    shutil.copy(SPEC, tmp_path / "aurora.yml")
    overlay = tmp_path / "site.yml"
    overlay.write_text("base: aurora.yml\ndashboard:\n  port: 5123\n")
    result = explained("aurora-dashboard.service", overlay)
    [line] = [line for line in result.lines if line.text.startswith("ExecStart=")]
    labels = [s.label() for s in line.sources]
    assert "site.yml:3 dashboard.port" in labels
    assert any(
        label.startswith("aurora.yml:") and "dashboard.checkout" in label for label in labels
    )


def test_unknown_and_ambiguous_names_are_one_line_errors() -> None:
    with pytest.raises(explain.ExplainError, match="renders no unit or file named 'nope'") as exc:
        explained("nope")
    assert "\n" not in str(exc.value)
    with pytest.raises(explain.ExplainError, match="ambiguous"):
        explained("aurora-cl61-source-sync")


def test_cli_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "aurora-cl61-source-sync.timer", "--spec", str(SPEC)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# /etc/systemd/system/aurora-cl61-source-sync.timer")
    assert "# hosts/aurora.yml:" in text or "aurora.yml:" in text
    assert main(["explain", "aurora-cl61-source-sync.timer", "--json", "--spec", str(SPEC)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["path"].endswith("aurora-cl61-source-sync.timer")
    keys = {s["key"] for line in data["lines"] for s in line["sources"]}
    assert "source_sync.defaults.every" in keys
    assert main(["explain", "nope", "--spec", str(SPEC)]) == 1
    assert capsys.readouterr().err.startswith("aurora-image: ")


def test_coincidences_are_not_sources() -> None:
    """The dashboard's `Wants=network-online.target` is the template's, although the
    same text is a spec value (source_sync.defaults.after): only a value that changes
    the line is its source."""
    assert sources_of(explained("aurora-dashboard"), "Wants=network-online.target") == []


def test_a_renamed_item_still_finds_its_file() -> None:
    """Changing a stream's name moves its files; explain follows the record, so the
    name is pinned on the lines it shapes only, not on every line."""
    result = explained("aurora-cl61-source-sync.timer")
    named = [line.text for line in result.lines if any(s.key[-1] == "name" for s in line.sources)]
    assert named == ["Unit=aurora-cl61-source-sync.service"]
