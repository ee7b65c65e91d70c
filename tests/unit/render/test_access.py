"""Access to the host: operators' keys baked in from the spec (a failed /data locks
no one out), and the instruments' and GWS hosts' keys checked strictly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from builder.errors import SpecError
from builder.render.engine import OPERATOR_KEYS, render
from builder.spec.model import load_spec
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm0xq9Zk3Yb7Qw8E2rT5uV1xN4pL6sD8fH0jK2mR9tB op@laptop"


def _spec(tmp_path: Path, keys: list[str]) -> Path:
    data = yaml.safe_load((REPO / "hosts" / "aurora.yml").read_text())
    data["dashboard"]["app"]["path"] = str(REPO / "app")
    data["operator_keys"] = keys
    path = tmp_path / "spec.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_operator_keys_are_baked_into_the_image(tmp_path: Path) -> None:
    tree = render(load_spec(_spec(tmp_path, [KEY])))
    assert tree[OPERATOR_KEYS].content.decode().splitlines()[1:] == [KEY]
    sshd = (REPO / "mkosi.extra/etc/ssh/sshd_config.d/aurora.conf").read_text()
    assert f"AuthorizedKeysFile .ssh/authorized_keys {OPERATOR_KEYS[:-4]}%u" in sshd


@pytest.mark.parametrize(
    "bad",
    [
        'command="/bin/sh" ' + KEY,  # options would run commands
        KEY + "\nssh-rsa AAAA x",  # two keys in one entry
        "-----BEGIN OPENSSH " + "PRIVATE KEY-----",  # the private half, split
    ],
)
def test_operator_keys_are_public_keys_only(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SpecError, match="operator_keys"):
        load_spec(_spec(tmp_path, [bad]))


def test_host_keys_are_checked_strictly_against_the_credential() -> None:
    spec = load_spec(REPO / "hosts" / "aurora.yml")
    declared = next(s.path for s in spec.secrets if s.name == "ssh.known_hosts")
    tree = render(spec)
    configs = [p for p in tree if p.startswith(("/etc/aurora/source-sync/", "/etc/aurora/gws/"))]
    configs.append("/etc/aurora/mirror-verify.json")
    for path in configs:
        text = tree[path].content.decode()
        assert "accept-new" not in text, path
        ssh = json.loads(text).get("ssh") or json.loads(text)["gws"]["ssh"]
        assert ssh["options"] == ["StrictHostKeyChecking=yes"], path
        assert ssh["known_hosts"] == declared, path


def test_the_tailnet_gets_no_way_around_the_firewall() -> None:
    """tailscaled adds no rules ahead of ufw, and no Tailscale SSH by default."""
    spec = load_spec(REPO / "hosts" / "aurora-jasmin.yml")
    unit = render(spec)["/etc/systemd/system/aurora-tailscale-up.service"].content.decode()
    start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "--netfilter-mode=off" in start and "--ssh" not in start
    assert load_spec(REPO / "hosts" / "aurora.yml").tailscale.ssh is False
