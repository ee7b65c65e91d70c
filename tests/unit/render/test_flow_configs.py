"""The rendered files the data flows depend on, checked against the deployment.

The env file against the deployment's own (tests/data/reference), every sync,
push and verification unit bounded in time, the volume identity marker made by
the storage unit where the pushes look for it, Tailscale's state on /data.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from builder.render.engine import GWS_CONFIG_DIR, SYSTEM_UNITS, VOLUME_MARKER, render
from builder.render.unitfile import parse_unit
from builder.spec.model import load_spec
from tests.paths import REPO_ROOT
from tests.programs import load_program, program_path

REPO = REPO_ROOT
SPEC = REPO / "hosts" / "aurora.yml"
JASMIN = REPO / "hosts" / "aurora-jasmin.yml"
REFERENCE_ENV = REPO / "tests" / "data" / "reference" / "aurora-dashboard.env"
STORAGE_UNIT = REPO / "mkosi.extra/etc/systemd/system/aurora-storage@.service"
# An Ansible checkout path the image has no use for (CONTRACT.md, Dashboard).
LEFT_OUT = {"AURORA_INFRA_REPO"}


def env_pairs(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, line
            assert key not in pairs, f"{key} twice"
            pairs[key] = value
    return pairs


@pytest.mark.parametrize("spec", [SPEC, JASMIN], ids=["default", "jasmin"])
def test_env_file_carries_the_deployments_names_and_values(spec: Path) -> None:
    reference = env_pairs(REFERENCE_ENV.read_text())
    ours = env_pairs(render(load_spec(spec))["/etc/aurora-dashboard.env"].content.decode())
    expected = {k: v for k, v in reference.items() if k not in LEFT_OUT}
    missing = sorted(set(expected) - set(ours))
    assert not missing, f"keys of the deployment's env file missing: {missing}"
    wrong = {k: (ours[k], v) for k, v in expected.items() if ours[k] != v}
    assert not wrong, f"values differ (ours, deployment's): {wrong}"
    assert "OPS_ALERT_RECIPIENTS" in ours and "OPS_ALERT_TO" not in ours


def test_env_file_holds_no_secret_values() -> None:
    ours = env_pairs(render(load_spec(SPEC))["/etc/aurora-dashboard.env"].content.decode())
    for key, value in ours.items():
        if any(word in key for word in ("PASSWORD", "SECRET", "TOKEN", "AUTHKEY", "PRIVATE")):
            assert value.startswith("/"), f"{key} must name a path, never hold a secret"
    assert "OPS_ALERT_SMTP_PASSWORD" not in ours


def test_secret_looking_env_keys_hold_only_paths(tmp_path: Path) -> None:
    from builder.errors import SpecError

    text = SPEC.read_text().replace(
        "  GWS_SSH_PRIVATE_KEY: /home/aurora/.ssh/id_rsa_jasmin_20200514",
        "  GWS_SSH_PRIVATE_KEY: ssh-rsa-AAAAB3NzaC1yc2E",
    )
    broken = tmp_path / "aurora.yml"
    broken.write_text(text.replace("path: ../app", f"path: {REPO / 'app'}"))
    with pytest.raises(SpecError, match="GWS_SSH_PRIVATE_KEY"):
        load_spec(broken)


def _services(tree: dict, prefix: str) -> dict[str, dict[str, list[str]]]:
    return {
        path.rsplit("/", 1)[1]: parse_unit(entry.content.decode())
        for path, entry in tree.items()
        if path.startswith(f"{SYSTEM_UNITS}/{prefix}") and path.endswith(".service")
    }


def test_every_sync_push_and_verification_has_a_start_timeout() -> None:
    tree = render(load_spec(SPEC))
    units = {
        **_services(tree, "aurora-gws-rsync-"),
        **{
            k: v
            for k, v in _services(tree, "aurora-").items()
            if k.endswith("-source-sync.service")
        },
        **_services(tree, "aurora-mirror-verify"),
    }
    assert len(units) == 4 + 8 + 1
    timeouts = {name: unit.get("Service.TimeoutStartSec") for name, unit in units.items()}
    assert all(timeouts.values()), timeouts
    assert timeouts["aurora-cl61-source-sync.service"] == ["15min"]
    assert timeouts["aurora-wxcam-source-sync.service"] == ["20min"]
    assert timeouts["aurora-gws-rsync-products-wxcam.service"] == ["12h"]
    assert timeouts["aurora-gws-rsync-raw.service"] == ["6h"]


def test_every_push_names_the_marker_the_storage_unit_makes() -> None:
    """The push looks for the marker where aurora-volume-id writes it, on every volume."""
    tree = render(load_spec(SPEC))
    assert load_program("aurora-volume-id").MARKER == VOLUME_MARKER
    assert load_program("aurora-gws-push").RECORD != VOLUME_MARKER
    unit = STORAGE_UNIT.read_text()
    start = unit.index("ExecStart=-/usr/lib/aurora/aurora-volume-id /%I")
    assert start < unit.index("ExecStart=/usr/bin/systemd-tmpfiles")  # before the layout
    assert program_path("aurora-volume-id").stat().st_mode & 0o111
    mounts = {m.where for m in load_spec(SPEC).mounts}
    for path, entry in tree.items():
        if path.startswith(GWS_CONFIG_DIR + "/"):
            config = json.loads(entry.content)
            marker = Path(config["volume_marker"])
            assert marker.name == VOLUME_MARKER and str(marker.parent) in mounts
            assert config["source"].startswith(str(marker.parent) + "/")


def test_volume_marker_is_made_once_and_kept(tmp_path: Path) -> None:
    program = load_program("aurora-volume-id")
    volume, other_volume = tmp_path / "data", tmp_path / "other"
    volume.mkdir()
    other_volume.mkdir()
    first, made = program.make_marker(volume)
    assert made
    marker = volume / VOLUME_MARKER
    content = marker.read_bytes()
    record = json.loads(content)
    assert record["id"] == first and record["mount"] == str(volume) and record["created"]
    assert marker.stat().st_mode & 0o777 == 0o444
    assert program.make_marker(volume) == (first, False)
    assert marker.read_bytes() == content  # kept byte for byte
    assert sorted(p.name for p in volume.iterdir()) == [VOLUME_MARKER]  # no temp left
    assert program.make_marker(other_volume)[0] != first  # another volume, another id


def test_volume_id_refuses_a_directory_that_is_not_a_mount_point(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(program_path("aurora-volume-id")), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "not a mount point" in result.stderr and "fix:" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_tailscale_state_lives_on_the_data_volume() -> None:
    """A promotion replaces /var: the node key (the tailnet identity) must survive it."""
    tree = render(load_spec(JASMIN))
    var = tree["/usr/lib/tmpfiles.d/aurora.conf"].content.decode().splitlines()
    assert "L /var/lib/tailscale - - - - /data/aurora/tailscale" in var
    data = tree["/usr/lib/aurora/storage/data.conf"].content.decode().splitlines()
    assert "d /data/aurora/tailscale 0700 root root -" in data
    dropin = parse_unit(
        tree[f"{SYSTEM_UNITS}/tailscaled.service.d/aurora-state.conf"].content.decode()
    )
    assert dropin["Unit.RequiresMountsFor"] == ["/data/aurora/tailscale"]
    assert dropin["Unit.After"] == ["aurora-storage@data.service"]
    assert dropin["Service.BindPaths"] == ["/data/aurora/tailscale:/var/lib/tailscale"]
    # The layout makes the state directory before tailscaled may start.
    assert data.index("d /data/aurora/tailscale 0700 root root -") > 0


def test_tailscale_off_renders_no_state_link() -> None:
    tree = render(load_spec(SPEC))
    assert "tailscale" not in tree["/usr/lib/tmpfiles.d/aurora.conf"].content.decode()
    assert f"{SYSTEM_UNITS}/tailscaled.service.d/aurora-state.conf" not in tree


def test_a_stream_is_verified_on_the_port_it_is_synced_on(tmp_path: Path) -> None:
    import yaml

    from builder.render.names import MIRROR_VERIFY_CONFIG, SYNC_CONFIG_DIR

    data = yaml.safe_load((REPO_ROOT / "hosts" / "aurora.yml").read_text())
    data["dashboard"]["app"]["path"] = str(REPO_ROOT / "app")
    stream = next(
        s for s in data["source_sync"]["streams"] if s.get("mode", "incremental") == "incremental"
    )
    stream["port"] = 2222
    path = tmp_path / "spec.yml"
    path.write_text(yaml.safe_dump(data))
    tree = render(load_spec(path))
    verify = json.loads(tree[MIRROR_VERIFY_CONFIG].content)
    sync = json.loads(tree[f"{SYNC_CONFIG_DIR}/{stream['name']}.json"].content)
    checked = next(s for s in verify["streams"] if s["name"] == stream["name"])
    assert checked["source"]["ssh"]["port"] == sync["ssh"]["port"] == 2222
