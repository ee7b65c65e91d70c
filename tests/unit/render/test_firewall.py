"""The firewall is rendered, not made by running ufw at build time: the files
must be the ones ufw itself writes.

tests/data/ufw/user.rules and user6.rules are the files ufw 0.36.2-9 wrote in an
image built from hosts/aurora.yml's firewall (`ufw allow|deny` per rule, before
the firewall was rendered); default-ufw is the package's /etc/default/ufw and
ufw.conf the image's (ENABLED=yes). The other rule forms below are what ufw
0.36.2-9's own rule code (UFWRule.format_rule, _get_rules_from_formatted) makes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from builder.errors import SpecError
from builder.render.engine import render
from builder.spec.model import load_spec
from tests.paths import REPO_ROOT

SPEC = REPO_ROOT / "hosts" / "aurora.yml"
UFW = REPO_ROOT / "tests" / "data" / "ufw"


def _render_with(tmp_path: Path, firewall: dict) -> dict:
    data = yaml.safe_load(SPEC.read_text())
    data["firewall"] = firewall
    data["dashboard"]["app"]["path"] = str(REPO_ROOT / "app")
    path = tmp_path / "spec.yml"
    path.write_text(yaml.safe_dump(data))
    return render(load_spec(path))


def test_rule_files_are_the_ones_ufw_wrote() -> None:
    tree = render(load_spec(SPEC))
    for path, recorded in (
        ("/etc/ufw/user.rules", "user.rules"),
        ("/etc/ufw/user6.rules", "user6.rules"),
        ("/etc/default/ufw", "default-ufw"),
    ):
        assert tree[path].content == (UFW / recorded).read_bytes(), path
    assert tree["/etc/ufw/user.rules"].mode == 0o640
    static = REPO_ROOT / "mkosi.extra" / "etc" / "ufw" / "ufw.conf"
    assert static.read_bytes() == (UFW / "ufw.conf").read_bytes()


def test_other_rule_forms_as_ufw_writes_them(tmp_path: Path) -> None:
    tree = _render_with(
        tmp_path,
        {
            "default_incoming": "reject",
            "allow": ["111", "6000:6007/tcp", "22/tcp"],
            "deny": ["10", "22/tcp"],
        },
    )
    v4 = tree["/etc/ufw/user.rules"].content.decode()
    rules = v4.split("### RULES ###\n", 1)[1].split("\n### END RULES ###", 1)[0]
    assert rules.strip().split("\n\n") == [
        "### tuple ### allow any 111 0.0.0.0/0 any 0.0.0.0/0 in\n"
        "-A ufw-user-input -p tcp --dport 111 -j ACCEPT\n"
        "-A ufw-user-input -p udp --dport 111 -j ACCEPT",
        "### tuple ### allow tcp 6000:6007 0.0.0.0/0 any 0.0.0.0/0 in\n"
        "-A ufw-user-input -p tcp -m multiport --dports 6000:6007 -j ACCEPT",
        # `ufw deny 22/tcp` after `ufw allow 22/tcp` updates the rule in place.
        "### tuple ### deny tcp 22 0.0.0.0/0 any 0.0.0.0/0 in\n"
        "-A ufw-user-input -p tcp --dport 22 -j DROP",
        "### tuple ### deny any 10 0.0.0.0/0 any 0.0.0.0/0 in\n"
        "-A ufw-user-input -p tcp --dport 10 -j DROP\n"
        "-A ufw-user-input -p udp --dport 10 -j DROP",
    ]
    v6 = tree["/etc/ufw/user6.rules"].content.decode()
    assert "### tuple ### allow any 111 ::/0 any ::/0 in\n" in v6
    assert "-A ufw6-user-input -p tcp -m multiport --dports 6000:6007 -j ACCEPT\n" in v6
    assert 'DEFAULT_INPUT_POLICY="REJECT"\n' in tree["/etc/default/ufw"].content.decode()


def test_a_port_range_without_protocol_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"firewall\.allow: '6000:6007' .* 6000:6007/tcp") as exc:
        _render_with(tmp_path, {"allow": ["6000:6007"]})
    assert "\n" not in str(exc.value)
