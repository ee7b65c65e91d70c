"""`aurora-image audit` against the booted image: clean, then drifted, then clean.

The drift is made at run time only (a stopped timer, a runtime drop-in under
/run/systemd/system, a failed transient unit) and undone afterwards, because
every other test shares this VM.

No waiting for the boot-time timer runs: a pipeline unit failing on the blank
volumes (the sample HATPRO append, about 2 min after boot) is tolerated by the
audit's own rule (builder.host.audit, as the probe judges it), so whether its
first run has happened yet cannot decide a verdict.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.cli.main import main
from builder.host import health
from builder.host.audit import audit, format_table
from builder.image.manifest import Manifest
from builder.image.store import read_manifest
from builder.vm.argv import SSH_HOST
from builder.vm.session import KeptVm

TIMER = "aurora-cl61-source-sync.timer"
DROPIN = "/run/systemd/system/aurora-dashboard.service.d/50-audit-probe.conf"
PROBE = "aurora-audit-probe.service"
DRIFT = f"""\
systemctl stop {TIMER}
mkdir -p {Path(DROPIN).parent}
printf '[Service]\\nEnvironment=AURORA_AUDIT_PROBE=1\\n' > {DROPIN}
systemctl daemon-reload
systemd-run --quiet --unit={PROBE} false
for i in $(seq 30); do systemctl is-failed --quiet {PROBE} && break; sleep 1; done
"""
RESTORE = f"""\
rm -rf {Path(DROPIN).parent}
systemctl daemon-reload
systemctl reset-failed {PROBE} || true
systemctl start {TIMER}
"""


@pytest.fixture(scope="module")
def manifest(image_dir: Path) -> Manifest:
    return read_manifest(image_dir)


@pytest.fixture
def drifted(booted: KeptVm) -> Iterator[KeptVm]:
    booted.succeed(DRIFT)
    try:
        yield booted
    finally:
        booted.succeed(RESTORE)


def cli_audit(machine: KeptVm, *extra: str) -> int:
    port = str(machine.forwarded_port("ssh"))
    return main(
        ["audit", SSH_HOST, "--ssh-config", str(machine.ssh_config), "--ssh-port", port, *extra]
    )


def test_clean_host_matches_its_manifest(booted: KeptVm, manifest: Manifest) -> None:
    report = audit(booted.remote(), manifest)
    assert report.ok, format_table(report)
    classes, _ = health.observe(booted.remote())
    assert all(classes.get(row.what) == health.PIPELINE for row in report.tolerated)
    assert report.claimed == manifest.tag
    assert len(report.rows) > len(manifest.rendered) + len(manifest.debian_packages)


def test_runtime_drift_is_reported(drifted: KeptVm, manifest: Manifest, capsys) -> None:
    report = audit(drifted.remote(), manifest)
    rows = {row.what: row for row in report.drifted}
    assert set(rows) == {TIMER, "aurora-dashboard.service", PROBE}, format_table(report)
    assert DROPIN in rows["aurora-dashboard.service"].found
    assert rows[PROBE].verdict == "failed"
    assert cli_audit(drifted, "--json") == 1
    assert json.loads(capsys.readouterr().out)["drift"] == 3


def test_restored_host_is_clean_again(booted: KeptVm, manifest: Manifest, capsys) -> None:
    """Runs after the drift test has undone its changes; the CLI exits 0."""
    assert cli_audit(booted) == 0
    assert "no drift" in capsys.readouterr().out
