"""Rendered units against the Ansible deployment's units, directive by directive.

`reference-units.json` (tests/data/reference, copied from the Ansible repository
as rendered; see its README) holds every unit of the deployment we
replace, rendered with its production variables. Every unit we render that has
a counterpart there must match it exactly, except for the differences listed in
ALLOWED with their reasons.
"""

from __future__ import annotations

import json
from fnmatch import fnmatch

import pytest

from builder.render.engine import SYSTEM_UNITS, render
from builder.render.unitfile import parse_unit
from builder.spec.model import load_spec
from tests.paths import REPO_ROOT

REPO = REPO_ROOT
REFERENCE = REPO / "tests" / "data" / "reference" / "reference-units.json"

# (unit globs, directive) -> why the image deliberately differs from the Ansible unit.
ALLOWED: dict[tuple[tuple[str, ...], str], str] = {
    (("aurora-*-source-sync.service",), "Unit.ConditionPathExists"): (
        "sources are only reachable over the tailnet: a host that has not joined it "
        "(a QEMU test, a fresh rebuild) skips the syncs instead of failing them"
    ),
    (("aurora-gws-rsync-*.service",), "Unit.ConditionPathExists"): (
        "a host given no JASMIN key (a QEMU test, a rebuild before secrets are in "
        "place) skips the pushes instead of failing them every few minutes"
    ),
    (
        (
            "aurora-asfs-fast-sonic-source-sync.service",
            "aurora-asfs-logger-source-sync.service",
            "aurora-cl61-source-sync.service",
            "aurora-hatpro-source-sync.service",
            "aurora-power-source-sync.service",
            "aurora-radar-source-sync.service",
            "aurora-vaisalamet-source-sync.service",
            "aurora-mirror-verify.service",
        ),
        "Service.TimeoutStartSec",
    ): (
        "no sync or verification may hang: a stalled source would otherwise block its "
        "stream until someone notices (the Ansible units set a timeout on WXcam alone)"
    ),
    (
        (
            "aurora-*-append.service",
            "aurora-*-quicklooks.service",
            "aurora-ceilometer-last24h.service",
            "aurora-ops-monitor-*.service",
            "aurora-wxcam-catalog.service",
            "aurora-wxcam-daily-videos.service",
        ),
        "Unit.ConditionPathExists",
    ): (
        "a processing job is skipped, not failed, when the app version in the image "
        "lacks its script (the default image carries a small sample app)"
    ),
}

# Least privilege (issue 13): every Aurora service runs sandboxed; the Ansible units
# ran them with the full rights of their user.
_SANDBOX = (
    "ProtectSystem ProtectHome InaccessiblePaths PrivateTmp PrivateDevices NoNewPrivileges "
    "CapabilityBoundingSet AmbientCapabilities RestrictSUIDSGID ProtectKernelTunables "
    "ProtectKernelModules ProtectKernelLogs ProtectControlGroups ProtectClock ProtectHostname "
    "ProtectProc ProcSubset RestrictAddressFamilies RestrictNamespaces RestrictRealtime "
    "LockPersonality RemoveIPC SystemCallArchitectures SystemCallFilter SystemCallErrorNumber"
)
for _key in _SANDBOX.split():
    ALLOWED[(("aurora-*.service",), f"Service.{_key}")] = (
        "sandboxed: a read-only system, no capabilities or new privileges, no access to "
        "the credential store or the TLS keys, the system-service syscalls only"
    )
ALLOWED[
    (
        (
            "aurora-*-source-sync.service",
            "aurora-gws-rsync-*.service",
            "aurora-mirror-verify.service",
            "aurora-*-append.service",
            "aurora-*-quicklooks.service",
            "aurora-ceilometer-last24h.service",
            "aurora-ops-monitor-*.service",
            "aurora-wxcam-catalog.service",
            "aurora-wxcam-daily-videos.service",
        ),
        "Service.ReadWritePaths",
    )
] = "each unit writes only where it must (its destination, state and logs)"
for _key in [
    "User",
    "Group",
    "CacheDirectory",
    "Environment",
    "UMask",
    "IPAddressAllow",
    "IPAddressDeny",
    "PrivateUsers",
]:
    ALLOWED[(("aurora-dashboard.service",), f"Service.{_key}")] = (
        "Panel faces the internet: it runs as its own user holding no key, reachable "
        "over loopback only, writing nothing but its cache"
    )
ALLOWED[(("aurora-dashboard.service",), "Unit.After")] = (
    "Panel starts after sshd (issue 14 goal 3): its imports are the boot's largest CPU "
    "load and would otherwise slow the path to ssh"
)


def _allowed(name: str, key: str) -> bool:
    return any(key == k and any(fnmatch(name, g) for g in globs) for globs, k in ALLOWED)


@pytest.fixture(scope="module")
def reference() -> dict[str, dict[str, list[str]]]:
    assert REFERENCE.exists(), f"{REFERENCE} missing (see tests/data/reference/README.md)"
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, list[str]]]:
    tree = render(load_spec(REPO / "hosts" / "aurora.yml"))
    prefix = SYSTEM_UNITS + "/"
    return {
        path.removeprefix(prefix): parse_unit(entry.content.decode())
        for path, entry in tree.items()
        if path.startswith(prefix) and entry.link is None and not entry.directory
    }


def _differences(ours: dict[str, list[str]], theirs: dict[str, list[str]]) -> list[str]:
    keys = sorted(set(ours) | set(theirs))
    return [k for k in keys if ours.get(k) != theirs.get(k)]


def test_rendered_units_match_the_reference(rendered, reference) -> None:
    missing = sorted(set(reference) - set(rendered))
    assert not missing, f"reference units with no rendered counterpart: {missing}"
    compared = sorted(rendered.keys() & reference.keys())
    problems = []
    for name in compared:
        for key in _differences(rendered[name], reference[name]):
            if not _allowed(name, key):
                problems.append(
                    f"{name} {key}: ours {rendered[name].get(key)} != "
                    f"reference {reference[name].get(key)}"
                )
    assert not problems, "\n".join(problems)


def test_allow_list_has_no_stale_entries(rendered, reference) -> None:
    for (globs, key), reason in ALLOWED.items():
        for pattern in globs:
            assert reason, f"{pattern} {key}: an allowed difference needs its reason"
            names = [n for n in rendered if fnmatch(n, pattern) and n in reference]
            assert names, f"{pattern}: allow-listed but matches no compared unit"
            for name in names:
                assert key in _differences(rendered[name], reference[name]), (
                    f"{name} {key}: allow-listed but no longer differs; remove it"
                )
