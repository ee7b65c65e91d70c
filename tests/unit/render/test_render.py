"""Rendering: pure, deterministic, and consistent with the programs that read it."""

from __future__ import annotations

import json
from pathlib import Path

from builder.render.engine import SYNC_CONFIG_DIR, SYNC_PROGRAM, render
from builder.render.tree import write_tree
from builder.spec.model import load_spec
from tests.paths import REPO_ROOT
from tests.programs import load_program

REPO = REPO_ROOT
SPEC = REPO / "hosts" / "aurora.yml"


def test_render_is_deterministic() -> None:
    spec = load_spec(SPEC)
    assert render(spec) == render(spec)


def test_every_stream_config_is_accepted_by_the_sync_program() -> None:
    program = load_program("aurora-source-sync")
    tree = render(load_spec(SPEC))
    configs = {p: e for p, e in tree.items() if p.startswith(SYNC_CONFIG_DIR + "/")}
    assert len(configs) == 8
    for path, entry in configs.items():
        cfg = program.parse_config(json.loads(entry.content), Path(path))
        assert cfg.dest_dir.startswith("/project/aurora/raw/")


def test_contract_command_names_link_to_the_one_program() -> None:
    tree = render(load_spec(SPEC))
    assert tree["/usr/local/bin/aurora-asfs-fast-sonic-sync"].link == SYNC_PROGRAM
    assert (REPO / "mkosi.extra" / SYNC_PROGRAM.lstrip("/")).stat().st_mode & 0o111


def test_wxcam_mirrors_hdr_only() -> None:
    tree = render(load_spec(SPEC))
    wxcam = json.loads(tree[f"{SYNC_CONFIG_DIR}/wxcam.json"].content)
    assert wxcam["mode"] == "mirror" and wxcam["delete_excluded"] is True
    assert wxcam["filters"][-1] == "- *"


def test_environment_file_has_no_secrets() -> None:
    env = render(load_spec(SPEC))["/etc/aurora-dashboard.env"].content.decode()
    assert "PASSWORD" not in env.upper() and "OPS_ALERT_TRANSPORT=auto" in env


def test_storage_layout_is_split_by_volume() -> None:
    tree = render(load_spec(SPEC))
    data = tree["/usr/lib/aurora/storage/data.conf"].content.decode()
    project = tree["/usr/lib/aurora/storage/project.conf"].content.decode()
    assert "d /data/aurora/products/wxcam/daily_videos 02775 aurora aurora -" in data
    assert "/project" not in data
    assert "d /project/aurora/raw/asfs/crd 02775 aurora aurora -" in project


def test_presets_enable_exactly_what_the_spec_says() -> None:
    preset = render(load_spec(SPEC))["/usr/lib/systemd/system-preset/00-aurora.preset"]
    lines = preset.content.decode().splitlines()
    assert lines[-1] == "disable *"
    assert "enable aurora-cl61-source-sync.timer" in lines
    assert "enable aurora-storage@.service data project" in lines


def test_write_tree_replaces_atomically(tmp_path: Path) -> None:
    tree = render(load_spec(SPEC))
    out = tmp_path / "render"
    (out / "stale").mkdir(parents=True)
    write_tree(tree, out)
    assert not (out / "stale").exists()
    assert (out / "etc/nginx/sites-enabled/aurora.conf").resolve() == (
        out / "etc/nginx/sites-available/aurora.conf"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["render"]


def test_mirror_verify_config_is_accepted_by_its_program() -> None:
    program = load_program("aurora-mirror-verify")
    tree = render(load_spec(SPEC))
    data = json.loads(tree["/etc/aurora/mirror-verify.json"].content)
    program.parse_config(data, Path("/etc/aurora/mirror-verify.json"))
    assert [s["name"] for s in data["streams"]][:2] == ["cl61", "radar"]
    assert data["settle_seconds"] == {"local": 600, "gws": 2700, "products": 900}


def test_gws_configs_are_accepted_by_the_push_program() -> None:
    program = load_program("aurora-gws-push")
    tree = render(load_spec(SPEC))
    names = []
    for path, entry in tree.items():
        if path.startswith("/etc/aurora/gws/"):
            cfg = program.parse_config(json.loads(entry.content), Path(path))
            names.append(cfg.name)
            assert cfg.dest.startswith("/gws/ssde/j25b/gamb2le/data/")
            assert tree[f"/usr/local/bin/aurora-gws-rsync-{cfg.name}"].link.endswith("gws-push")
    assert sorted(names) == ["manifests", "products", "products-wxcam", "raw"]


def test_production_overlay_adds_tailscale_and_cephfs() -> None:
    tree = render(load_spec(REPO / "hosts" / "aurora-jasmin.yml"))
    fstab = tree["/etc/fstab"].content.decode()
    assert " /project ceph " in fstab
    # The key comes from the credential store on /data, installed before the mount.
    assert "secretfile=/run/aurora/credentials/cephfs.secret" in fstab
    assert "x-systemd.requires=aurora-credentials.service" in fstab
    preset = tree["/usr/lib/systemd/system-preset/00-aurora.preset"].content.decode()
    assert "enable tailscaled.service" in preset.splitlines()
    unit = tree["/etc/systemd/system/aurora-tailscale-up.service"].content.decode()
    assert "ConditionPathExists=/usr/sbin/tailscaled" in unit
    assert "--auth-key=file:${CREDENTIALS_DIRECTORY}/tailscale.authkey" in unit
    # ConditionCredential= would not see the credential store: the check is at exec time.
    assert "\nConditionCredential=" not in unit and "\nExecCondition=" in unit
    base = render(load_spec(SPEC))
    assert "/etc/systemd/system/aurora-tailscale-up.service" not in base


def test_credential_store_is_on_the_data_volume() -> None:
    tree = render(load_spec(SPEC))
    unit = tree["/etc/systemd/system/aurora-credentials.service"].content.decode()
    assert "WantsMountsFor=/data/aurora/credstore" in unit
    assert "ImportCredential=ssh.authorized_keys.root" in unit


def test_missing_apt_key_is_a_clear_spec_error_before_a_build(tmp_path: Path) -> None:
    import pytest

    from builder.errors import SpecError
    from builder.image.build import build
    from builder.paths import Paths

    spec = load_spec(REPO / "hosts" / "aurora-jasmin.yml")  # keys/ is not in the repository
    with pytest.raises(SpecError, match=r"apt_repositories\[0\]\.key: .* does not exist"):
        build(spec, Paths.under(tmp_path))


def test_switched_off_parts_ship_their_units_but_not_enabled(tmp_path: Path) -> None:
    import yaml

    data = yaml.safe_load(SPEC.read_text())
    data["source_sync"]["streams"][0]["enabled"] = False
    data["jobs"][0]["enabled"] = False
    data["gws"]["jobs"][0]["enabled"] = False
    data["mirror_verify"]["enabled"] = False
    data["dashboard"]["app"]["path"] = str(REPO / "app")
    path = tmp_path / "spec.yml"
    path.write_text(yaml.safe_dump(data))
    tree = render(load_spec(path))
    preset = tree["/usr/lib/systemd/system-preset/00-aurora.preset"].content.decode().splitlines()
    for unit in (
        "aurora-cl61-source-sync.timer",
        f"aurora-{data['jobs'][0]['name']}.timer",
        "aurora-gws-rsync-raw.timer",
        "aurora-mirror-verify.timer",
    ):
        assert f"enable {unit}" not in preset, unit
        assert f"/etc/systemd/system/{unit}" in tree, unit
    assert "enable aurora-radar-source-sync.timer" in preset


def test_sync_state_lives_on_the_data_volume() -> None:
    """A promotion replaces /var; the streams' progress must survive it."""
    tree = render(load_spec(SPEC))
    var = tree["/usr/lib/tmpfiles.d/aurora.conf"].content.decode().splitlines()
    assert "L /var/lib/aurora-cloud - - - - /data/aurora/state" in var
    data = tree["/usr/lib/aurora/storage/data.conf"].content.decode().splitlines()
    assert "d /data/aurora/state 0755 aurora aurora -" in data
