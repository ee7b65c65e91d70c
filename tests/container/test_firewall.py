"""The firewall the image loads at boot is ufw's own (issue 14 goal 3). ufw.service
restores, in one transaction per family, the tables the image build saved from the
image's own `ufw-init start` (builder.image.layer.firewall_lines); here the image's
ufw-init and that boot start each run in a network namespace of their own (the
host's kernel) and their tables must be the same, after a restart too. tests/vm
checks the booted host's tables on the image's own kernel."""

from __future__ import annotations

from pathlib import Path

from builder.image.root import Container
from builder.render.names import FIREWALL_SAVED
from builder.spec.model import HostSpec
from tests.firewall_tables import tables

UFW_INIT = "/usr/lib/ufw/ufw-init"
BOOT_START = "/usr/lib/aurora/aurora-firewall"
BOTH = "iptables-save; echo @@; ip6tables-save; echo @@"


def _loaded(root: Path, command: str) -> list[str]:
    """What `command` leaves in the kernel of a fresh network namespace: iptables-save
    and ip6tables-save after each `BOTH` in it."""
    with Container(root, network=False) as box:
        return box.succeed(command).split("@@\n")[:-1]


def _saved(root: Path) -> list[str]:
    return [(root / path.lstrip("/")).read_text() for path in FIREWALL_SAVED]


def test_the_saved_tables_are_what_ufw_loads(root: Path, spec: HostSpec) -> None:
    saved = _saved(root)
    v4, v6 = (tables(text) for text in saved)
    # the spec's firewall is in them: its default for incoming, its tcp allows and denies
    assert v4["filter"]["INPUT"][0] == "DROP" and v6["filter"]["INPUT"][0] == "DROP"
    user = "\n".join(v4["filter"]["ufw-user-input"][1])
    for rules, verdict in ((spec.firewall.allow, "ACCEPT"), (spec.firewall.deny, "DROP")):
        for port in (rule.split("/")[0] for rule in rules if rule.endswith("/tcp")):
            assert f"-p tcp -m tcp --dport {port} -j {verdict}" in user, (port, user)
    assert not any(line.startswith("#") for text in saved for line in text.splitlines())
    ufw = _loaded(root, f"{UFW_INIT} start quiet; {BOTH}")
    assert [tables(text) for text in ufw] == [v4, v6]


def test_the_boot_start_restores_them_and_a_restart_is_ufws_own(root: Path) -> None:
    """The first start of a boot restores the saved tables; after `ufw-init stop`
    (which leaves ufw's chains behind) a start is ufw-init's own, so nothing is
    loaded twice."""
    expected = [tables(text) for text in _saved(root)]
    runs = _loaded(
        root,
        f"{BOOT_START} && test -e /run/aurora-firewall.restored && {BOTH}; "
        f"{UFW_INIT} stop >/dev/null && {BOOT_START} && {BOTH}",
    )
    assert [tables(text) for text in runs] == expected * 2


def test_the_saved_tables_are_root_only(root: Path) -> None:
    for path in FIREWALL_SAVED:
        info = (root / path.lstrip("/")).stat()
        assert (info.st_mode & 0o777, info.st_uid, info.st_gid) == (0o640, 0, 0), path
