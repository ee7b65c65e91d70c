"""No spec value can inject: any string in any field either is refused with one line
naming the file and key, or renders files with no line, section or directive beyond
those of the clean render.

Property-based (hypothesis, derandomized so a run is repeatable): each example puts
one random string, or the field's own value with hostile characters spliced in, into
one string of the production spec (the default spec with the JASMIN overlay, so
apt repositories, Tailscale and CephFS options are covered too), writes the spec
file and loads it the way `aurora-image` does.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from builder.errors import SpecError
from builder.render.engine import SYSTEM_UNITS, Tree, render
from builder.spec.model import load_spec
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
HOSTS = REPO / "hosts"

KeyPath = tuple[str | int, ...]


def _production_spec() -> dict[str, Any]:
    """The JASMIN spec (aurora.yml with its overlay) with every default spelled out,
    plus the optional strings it leaves unset: every string field of the spec."""
    data = load_spec(HOSTS / "aurora-jasmin.yml").model_dump(mode="json", exclude_none=True)
    data["apt_repositories"][0]["key"] = str(HOSTS / "../keys/tailscale-archive-keyring.gpg")
    data["dashboard"]["app"]["path"] = str(REPO / "app")
    data["source_sync"]["streams"][0]["user"] = "aurora"
    data["source_sync"]["streams"][0]["timeout"] = "10min"
    data["jobs"][0]["wants"] = ["network-online.target"]
    data["deploy"]["address"] = "192.0.2.10"
    data["gws"]["mount"]["enabled"] = True
    return data


CLEAN = _production_spec()


def _string_leaves(node: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, bool]]:
    """Every string in the spec: (path, is_mapping_key)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and path and path[-1] in ("environment", "static_dirs"):
                yield (*path, key), True
            yield from _string_leaves(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _string_leaves(value, (*path, index))
    elif isinstance(node, str):
        yield path, False


LEAVES = sorted(_string_leaves(CLEAN), key=repr)


def _get(data: Any, path: KeyPath) -> Any:
    for part in path:
        data = data[part]
    return data


def _replaced(path: KeyPath, is_key: bool, value: str) -> dict[str, Any]:
    data = json.loads(json.dumps(CLEAN))
    parent = _get(data, path[:-1])
    if is_key:
        items = list(parent.items())
        parent.clear()
        parent.update((value if k == path[-1] else k, v) for k, v in items)
    else:
        parent[path[-1]] = value
    return data


# ----------------------------------------------------------------- shape of a render

_SECTION = re.compile(r"^\[([^\]]*)\]$")


def _unit_shape(text: str) -> Iterator[tuple[str, ...]]:
    section = ""
    for line in text.split("\n"):
        if match := _SECTION.match(line):
            section = match.group(1)
            yield ("section", section)
        elif line.strip() and not line.startswith(("#", ";")):
            # Comments are the templates' (a value cannot start a line): not counted.
            yield ("directive", section, line.split("=", 1)[0].strip())


def _nginx_shape(text: str) -> Iterator[tuple[str, ...]]:
    """Per line: its first word and the statements and blocks it opens or closes,
    counted outside quotes (as nginx's tokenizer reads them)."""
    for line in text.split("\n"):
        bare = re.sub(r'"[^"]*"|\'[^\']*\'', '""', line)
        bare = bare.split("#", 1)[0] if not bare.lstrip().startswith("#") else "#"
        words = bare.split()
        yield (
            "nginx",
            words[0] if words else "",
            str(bare.count(";")),
            str(bare.count("{")),
            str(bare.count("}")),
        )


def _fields_shape(text: str, typed: bool = True) -> Iterator[tuple[str, ...]]:
    """tmpfiles, fstab, sysusers, presets: how many fields a line has, and its first field
    where that is the line's type (tmpfiles' `d`, sysusers' `u`, presets' `enable`)."""
    for line in text.split("\n"):
        if line.startswith("#"):
            yield ("comment",)
        elif line.strip():
            fields = re.findall(r'"[^"]*"|\S+', line)
            yield ("fields", fields[0] if typed else "", str(len(fields)))


def _json_shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_shape(v) for v in value]
    return "value"  # a value may change kind (a path or null), not the structure


def _file_shape(path: str, content: bytes) -> tuple[str, Counter[tuple[str, ...]]]:
    """(kind of file, multiset of its line shapes)."""
    text = content.decode()
    if path.endswith(".json"):
        shape = json.dumps(_json_shape(json.loads(text)), sort_keys=True)
        return "json", Counter({("json", shape): 1})
    if path.startswith(SYSTEM_UNITS + "/"):
        return "unit:" + path.rsplit(".", 1)[-1], Counter(_unit_shape(text))
    if path.startswith("/etc/nginx/"):
        return "nginx:" + path.rsplit("/", 1)[-1], Counter(_nginx_shape(text))
    if path.endswith(".env"):
        # One variable a line; a key may be renamed, but no line may be added.
        keys = [line for line in text.split("\n") if line and line[0] != "#"]
        return "env:" + path, Counter({("variables",): len(keys)})
    if "tmpfiles.d" in path or path.startswith("/usr/lib/aurora/storage/"):
        # The number of directories follows the paths (a deeper root has more
        # parents); what may not change is the shape of each line.
        return "tmpfiles", Counter(set(_fields_shape(text)))
    if path == "/etc/fstab":
        return "fstab", Counter(_fields_shape(text, typed=False))
    if path == "/etc/hostname":
        return "hostname", Counter({("lines", str(text.count("\n"))): 1})
    return "fields:" + path, Counter(_fields_shape(text))


def _shape(tree: Tree) -> Counter[tuple[str, ...]]:
    """Every line shape of every file, by kind of file, plus how many files of each kind."""
    total: Counter[tuple[str, ...]] = Counter()
    for path, entry in tree.items():
        if entry.link is not None or entry.directory:
            total[("link-or-dir",)] += 1
            continue
        kind, lines = _file_shape(path, entry.content)
        total[("file", kind)] += 1
        for line, count in lines.items():
            total[(kind, *line)] += count
    return total


def _write(data: dict[str, Any], directory: Path) -> Path:
    path = directory / "spec.yml"
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    path.write_text(yaml.dump(data, Dumper=dumper, allow_unicode=False, sort_keys=False))
    return path


def _load(data: dict[str, Any]) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(data, Path(tmp))
        try:
            return load_spec(path)
        except SpecError as exc:
            message = str(exc)
            assert "\n" not in message.strip(), f"refused with more than one line: {message}"
            assert message.startswith(f"{path}:"), f"refusal does not name the file: {message}"
            return None


CLEAN_SHAPE = _shape(render(_load(CLEAN)))
ENV_KEY = next(iter(CLEAN["environment"]))


def _assert_no_injection(path: KeyPath, is_key: bool, value: str) -> None:
    spec = _load(_replaced(path, is_key, value))
    if spec is None:
        return
    extra = _shape(render(spec)) - CLEAN_SHAPE
    assert not extra, f"{path} = {value!r} renders beyond the clean spec: {sorted(extra)}"


# Characters that end lines, fields, statements or strings somewhere in the render.
HOSTILE = "\n\r\t\x0b\x0c\x00\x1b\x85\u2028\u2029\u202e \\%$`'\";{}#=[]&|<>()*?~!,:@"

leaves = st.sampled_from(LEAVES)
hostile_text = st.text(alphabet=st.sampled_from(HOSTILE), min_size=1, max_size=4)
printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=3)
any_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=24)


@st.composite
def field_values(draw: st.DrawFn) -> tuple[KeyPath, bool, str]:
    path, is_key = draw(leaves)
    original = path[-1] if is_key else _get(CLEAN, path)
    assert isinstance(original, str)
    mode = draw(st.sampled_from(["any", "hostile", "printable"]))
    if mode == "any":
        value = draw(any_text)
    else:  # the valid value with characters spliced in: printable ones are often accepted
        at = draw(st.integers(0, len(original)))
        value = (
            original[:at] + draw(hostile_text if mode == "hostile" else printable) + original[at:]
        )
    return path, is_key, value


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(field_values())
@example((("source_sync", "streams", 0, "description"), False, "x\nExecStartPre=/bin/sh -c id"))
@example((("environment", ENV_KEY), False, "a\nLD_PRELOAD=/tmp/x.so"))
@example((("jobs", 0, "command"), False, "{venv}/bin/python x.py %n $HOME ${PATH}"))
@example((("storage", "raw_root"), False, "/project/$(id) x"))
@example((("apt_repositories", 0, "suite"), False, "trixie [trusted=yes]"))
@example(
    (("nginx", "wxcam_media", "location"), False, "/wxcam-media/ { return 200; } location /x/")
)
@example((("mounts", 0, "options"), False, "defaults 0 0\n/dev/sdb /x ext4"))
def test_no_field_injects(case: tuple[KeyPath, bool, str]) -> None:
    _assert_no_injection(*case)


def test_every_string_field_is_exercised() -> None:
    """The property covers every kind of string: names, paths, commands, apt, nginx, env."""
    heads = {p[0] for p, _ in LEAVES}
    assert {"environment", "apt_repositories", "nginx", "mounts", "jobs", "gws"} <= heads
    assert len(LEAVES) > 300


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("source_sync", "streams", 0, "description"), "pull\nExecStartPre=/bin/sh -c id"),
        (("jobs", 0, "description"), "fine\r[Service]"),
        (("storage", "raw_root"), "/project/a b"),
        (("storage", "raw_root"), "/project/$(id)"),
        (("mounts", 0, "where"), "/data%n"),
        (("apt_repositories", 0, "suite"), "trixie [trusted=yes]"),
        (("apt_repositories", 0, "url"), "https://x.example/ trixie main\ndeb http://evil"),
        (("source_sync", "streams", 0, "patterns", 0), "*.nc --rsh=sh"),
        (("source_sync", "streams", 0, "host"), "host -oProxyCommand=id"),
        (("gws", "user"), "rrniii@evil"),
        (("nginx", "wxcam_media", "location"), "/x/ { }"),
        (("nginx", "security_headers", 0), 'X-A "b"; return 200'),
        (("jobs", 0, "after", 0), "network-online.target\nExecStartPre=id"),
        (("jobs", 0, "command"), "{venv}/bin/python x.py \\"),
    ],
)
def test_hostile_values_are_refused_with_one_line(path: KeyPath, value: str) -> None:
    assert _load(_replaced(path, False, value)) is None


def test_percent_and_dollar_reach_the_command_literally() -> None:
    job = CLEAN["jobs"][0]["name"]
    spec = _load(_replaced(("jobs", 0, "command"), False, "{venv}/bin/python x.py 5% $HOME"))
    assert spec is not None
    unit = render(spec)[f"{SYSTEM_UNITS}/aurora-{job}.service"].content.decode()
    assert "ExecStart=/opt/aurora-cloud-dashboard/venv/bin/python x.py 5%% $$HOME\n" in unit


def test_percent_in_a_description_is_not_a_specifier() -> None:
    spec = _load(_replaced(("source_sync", "streams", 0, "description"), False, "pull 100%n"))
    assert spec is not None
    unit = render(spec)[f"{SYSTEM_UNITS}/aurora-cl61-source-sync.service"].content.decode()
    assert "Description=pull 100%%n\n" in unit
