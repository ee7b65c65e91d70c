"""Least privilege as rendered: ownership on the volumes that the service user cannot
climb, and sandboxed units (scored by the real `systemd-analyze security --offline`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.render.engine import SYSTEM_UNITS, render
from builder.render.tree import write_tree
from builder.spec.model import HostSpec, load_spec
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
SPECS = [REPO / "hosts" / "aurora.yml", REPO / "hosts" / "aurora-jasmin.yml"]


def _layout(spec: HostSpec) -> dict[str, tuple[str, str]]:
    """path -> (mode, owner) of every directory the storage layout makes."""
    tree = render(spec)
    layout = {}
    for path, entry in tree.items():
        if path.startswith("/usr/lib/aurora/storage/"):
            for line in entry.content.decode().splitlines():
                fields = line.split()
                if fields and fields[0] == "d":
                    layout[fields[1]] = (fields[2], fields[3])
    return layout


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.name)
def test_root_read_paths_have_only_root_owned_parents(spec_path: Path) -> None:
    spec = load_spec(spec_path)
    layout = _layout(spec)
    trusted = [spec.credential_store, spec.nginx.certificate_dir]
    for path in trusted:
        mount = max((m.where for m in spec.mounts if path.startswith(m.where + "/")), key=len)
        parent = path.rsplit("/", 1)[0]
        while parent != mount:
            assert layout.get(parent, ("", "root"))[1] == "root", (path, parent, layout[parent])
            parent = parent.rsplit("/", 1)[0]
    assert layout[spec.credential_store] == ("0700", "root")


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.name)
def test_the_user_owns_only_its_write_areas(spec_path: Path) -> None:
    spec = load_spec(spec_path)
    s = spec.storage
    areas = [s.raw_root, s.product_root, spec.mirror_verify.manifest_root, s.state_on_volume]
    owned = [p for p, (_, owner) in _layout(spec).items() if owner == spec.user.name]
    assert owned
    for path in owned:
        assert any(path == a or path.startswith(f"{a}/") for a in areas if a), path


def _unit(spec: HostSpec, name: str) -> str:
    return render(spec)[f"{SYSTEM_UNITS}/{name}"].content.decode()


def test_panel_runs_as_its_own_user_without_keys() -> None:
    spec = load_spec(SPECS[0])
    unit = _unit(spec, "aurora-dashboard.service")
    assert f"User={spec.dashboard.user}\n" in unit and spec.dashboard.user != spec.user.name
    for line in ("ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
                 "CapabilityBoundingSet=\n", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                 "SystemCallFilter=@system-service"):  # fmt: skip
        assert line in unit
    assert "\nReadWritePaths=" not in unit
    users = render(spec)["/usr/lib/sysusers.d/aurora.conf"].content.decode()
    assert re.search(rf"^u {spec.dashboard.user} - .* /usr/sbin/nologin$", users, re.M)


def test_syncs_write_only_their_destination_state_and_logs() -> None:
    spec = load_spec(SPECS[0])
    unit = _unit(spec, "aurora-cl61-source-sync.service")
    writes = re.search(r"^ReadWritePaths=(.*)$", unit, re.M).group(1).split()
    assert writes == [
        "-/project/aurora/raw/cl61",
        "-/var/lib/aurora-cloud",
        "-/data/aurora/state",
        "-/var/log/aurora-cloud",
    ]
    assert "ProtectHome=read-only" in unit
    assert f"-{spec.credential_store}" in unit  # InaccessiblePaths


@pytest.fixture(scope="module")
def offline_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    write_tree(render(load_spec(SPECS[0])), root / "tree")
    return root / "tree"


def _exposure(root: Path, unit: str) -> float:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={root}", unit],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out)
    assert match, out[-500:]
    return float(match.group(1))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize(
    ("unit", "limit"),
    [
        ("aurora-dashboard.service", 2.0),
        ("aurora-cl61-source-sync.service", 2.5),
        ("aurora-gws-rsync-raw.service", 2.5),
        ("aurora-mirror-verify.service", 2.5),
        ("aurora-ops-monitor-alerts.service", 2.5),
    ],
)
def test_exposure_of_the_rendered_units(offline_root: Path, unit: str, limit: float) -> None:
    assert _exposure(offline_root, unit) <= limit
