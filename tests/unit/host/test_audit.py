"""The drift audit's rules, on output recorded from a real VM.

`data/audit/clean.txt` and `drift.txt` are what `builder.host.observation.script` printed
on image 2026.11-c735078397ed booted under QEMU (`manifest.json` is that
image's manifest, cut to the keys the audit reads): once untouched, once
after `systemctl stop` of a timer, a runtime drop-in, `mask --runtime` of
certbot.timer, a failed transient unit and a bind mount over /etc/hostname.
Package and file drift that a read-only root makes hard to stage is made by
editing the clean recording, the same text the host would print.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from builder.host import audit, observation
from builder.image.manifest import Manifest
from builder.image.store import read_manifest
from tests.paths import REPO_ROOT

DATA = REPO_ROOT / "tests" / "data" / "audit"


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return read_manifest(DATA)


@pytest.fixture(scope="module")
def clean() -> str:
    return (DATA / "clean.txt").read_text()


def report(manifest: Manifest, output: str) -> audit.AuditReport:
    seen = observation.parse(output)
    return audit.AuditReport("vm", manifest.tag, None, tuple(audit.compare(manifest, seen)))


def drifted(rep: audit.AuditReport) -> dict[str, audit.Row]:
    return {row.what: row for row in rep.drifted}


def edit_section(output: str, section: str, old: str, new: str) -> str:
    """Replace text inside one section only, failing loudly if it is not there."""
    head, marker, rest = output.partition(f"{observation.MARK}{section}\n")
    body, nxt, tail = rest.partition(observation.MARK)
    assert old in body, f"{old!r} not in section {section}"
    return head + marker + body.replace(old, new, 1) + nxt + tail


def test_clean_host_matches(manifest: Manifest, clean: str) -> None:
    rep = report(manifest, clean)
    assert rep.ok, audit.format_table(rep)
    kinds = {row.kind for row in rep.rows}
    assert kinds == {"image", "file", "unit", "debian", "python"}
    assert len([r for r in rep.rows if r.kind == "file"]) == len(manifest.rendered)
    assert len([r for r in rep.rows if r.kind == "debian"]) == len(manifest.debian_packages)
    assert "no drift" in rep.summary()


def test_recorded_drift_is_reported(manifest: Manifest) -> None:
    rep = report(manifest, (DATA / "drift.txt").read_text())
    rows = drifted(rep)
    assert set(rows) == {
        "/etc/hostname",
        "aurora-cl61-source-sync.timer",
        "aurora-dashboard.service",
        "certbot.timer",
        "aurora-audit-probe.service",
    }
    assert rows["/etc/hostname"].verdict == "changed"
    assert "not active" in rows["aurora-cl61-source-sync.timer"].found
    assert (
        "/run/systemd/system/aurora-dashboard.service.d" in rows["aurora-dashboard.service"].found
    )
    assert "masked-runtime" in rows["certbot.timer"].found
    assert rows["aurora-audit-probe.service"].verdict == "failed"
    assert not rep.ok
    assert rep.summary().endswith("(1 file, 4 unit)")
    data = rep.to_json()
    assert data["ok"] is False and data["drift"] == 5
    assert json.loads(json.dumps(data)) == data


APPEND = "aurora-asfs-fast-sonic-append.service"
CLASSES = json.dumps({"service": ["aurora-credentials.service"], "pipeline": [APPEND]})


def failing(clean: str, *units: str, classes: str | None = CLASSES) -> str:
    """The clean recording with ``units`` failed (as systemctl shows and lists them) and,
    unless None, the image's unit classes (recordings older than the section lack it)."""
    out = clean
    for unit in units:
        out = edit_section(
            out, "units", f"Id={unit}\nLoadState=loaded\nActiveState=inactive\nSubState=dead",
            f"Id={unit}\nLoadState=loaded\nActiveState=failed\nSubState=failed",
        )  # fmt: skip
        out = out.replace(
            f"{observation.MARK}failed\n",
            f"{observation.MARK}failed\n{unit} loaded failed failed {unit}\n",
        )
    if classes is not None:
        out = out.replace(
            f"{observation.MARK}dpkg\n", f"{observation.MARK}classes\n{classes}\n"
            f"{observation.MARK}dpkg\n",
        )  # fmt: skip
    return out


def test_a_failed_pipeline_unit_is_shown_not_drift(manifest: Manifest, clean: str) -> None:
    """As the probe judges it with nothing recorded before a rebuild: a sync or job failing
    on its instrument or data is not the host differing from its image."""
    rep = report(manifest, failing(clean, APPEND))
    assert rep.ok, audit.format_table(rep)
    [row] = rep.tolerated
    assert (row.what, row.verdict) == (APPEND, "tolerated") and "pipeline" in row.found
    assert f"failed pipeline units, not drift: {APPEND}" in rep.summary()
    assert APPEND in audit.format_table(rep)
    assert rep.to_json()["tolerated"] == 1 and rep.to_json()["drift"] == 0


def test_a_failed_service_or_unclassified_unit_is_drift(manifest: Manifest, clean: str) -> None:
    service = "aurora-credentials.service"
    out = failing(clean, APPEND, classes=None)  # an image that does not say: counts
    assert drifted(report(manifest, out))[APPEND].verdict == "failed"
    out = failing(clean, APPEND).replace(
        f"Id={service}\nLoadState=loaded\nActiveState=active",
        f"Id={service}\nLoadState=loaded\nActiveState=failed",
    )
    rows = drifted(report(manifest, out))
    assert set(rows) == {service} and rows[service].verdict == "failed"
    # A pipeline unit changed at run time is drift, failed or not.
    out = edit_section(
        failing(clean, APPEND), "units", f"Id={APPEND}\nLoadState=loaded",
        f"Id={APPEND}\nLoadState=masked",
    )  # fmt: skip
    row = drifted(report(manifest, out))[APPEND]
    assert row.verdict == "changed" and "masked" in row.found and "pipeline" in row.found


def test_package_drift(manifest: Manifest, clean: str) -> None:
    out = edit_section(clean, "dpkg", "\tnginx\t", "\tnginx-XX\t")
    out = edit_section(out, "dpkg", "\trsync\t3.5.0+ds1-0+deb13u2", "\trsync\t3.5.0+ds1-1")
    out = edit_section(out, "python", "panel\t1.8.2", "panel\t1.8.3\ntyping_extensions2\t0.1")
    rows = drifted(report(manifest, out))
    assert rows["nginx"].verdict == "missing" and rows["nginx-XX"].verdict == "extra"
    assert (rows["rsync"].expected, rows["rsync"].found) == ("3.5.0+ds1-0+deb13u2", "3.5.0+ds1-1")
    assert rows["panel"].verdict == "changed"
    assert rows["typing-extensions2"].verdict == "extra"


def test_python_names_are_normalised(manifest: Manifest, clean: str) -> None:
    """uv lists `pyyaml`, the venv's metadata says `PyYAML`: the same package."""
    assert "PyYAML\t6.0.3" in clean
    assert "pyyaml" in manifest.python_packages
    assert "pyyaml" not in drifted(report(manifest, clean))


def test_missing_venv_is_drift(manifest: Manifest, clean: str) -> None:
    head, _, _ = clean.partition(f"{observation.MARK}python\n")
    out = (
        head + f"{observation.MARK}python\nerror: no Python venv at /opt/x\n{observation.MARK}end\n"
    )
    rows = drifted(report(manifest, out))
    assert rows["dashboard venv"].found == "no Python venv at /opt/x"


def test_file_drift_kinds(manifest: Manifest, clean: str) -> None:
    out = edit_section(clean, "files", "f\t/etc/fstab\t644", "f\t/etc/fstab\t664")
    out = edit_section(out, "files", "../sites-available/aurora.conf", "/tmp/evil.conf")
    out = edit_section(out, "files", "d\t/project\t755\t\n", "")
    rows = drifted(report(manifest, out))
    assert rows["/etc/fstab"].found.startswith("0664 ")
    assert rows["/etc/nginx/sites-enabled/aurora.conf"].found == "link -> /tmp/evil.conf"
    assert rows["/project"].verdict == "missing"


def test_truncated_output_is_an_error_not_drift(clean: str) -> None:
    cut = clean.partition(f"{observation.MARK}dpkg")[0]
    with pytest.raises(ValueError, match="stopped early"):
        observation.parse(cut)


def test_units_to_check(manifest: Manifest, clean: str) -> None:
    units = observation.rendered_units(manifest)
    assert "aurora-dashboard.service" in units
    assert not [u for u in units if "@." in u]
    presets = observation.parse(clean).presets
    enabled = observation.preset_enabled(presets)
    assert {"aurora-storage@data.service", "aurora-storage@project.service"} <= set(enabled)
    assert "aurora-storage@.service" not in enabled


@pytest.mark.parametrize(
    ("name", "wanted", "show", "verdict", "says"),
    [
        ("a.timer", True, {"UnitFileState": "enabled", "ActiveState": "active"}, "ok", ""),
        ("a.timer", True, {"UnitFileState": "disabled"}, "changed", "not enabled"),
        ("b.service", False, {"UnitFileState": "enabled"}, "changed", "image leaves it off"),
        ("c.service", True, {"UnitFileState": "enabled", "Type": "oneshot"}, "ok", ""),
        (
            "c.service",
            True,
            {"UnitFileState": "enabled", "Type": "notify"},
            "changed",
            "not active",
        ),
        ("d.service", False, {"ActiveState": "failed"}, "failed", "failed"),
        ("e.service", False, {"LoadState": "not-found"}, "missing", "not-found"),
        (
            "f.service",
            False,
            {"FragmentPath": "/run/systemd/system/f.service"},
            "changed",
            "replaced by",
        ),
        (
            "g.service",
            False,
            {"DropInPaths": "/usr/lib/systemd/system/g.service.d/x.conf"},
            "ok",
            "",
        ),
        (
            "g.service",
            False,
            {"DropInPaths": "/run/systemd/system.control/g.service.d/50-CPUQuota.conf"},
            "changed",
            "drop-in",
        ),
    ],
)
def test_unit_rules(name: str, wanted: bool, show: dict[str, str], verdict: str, says: str) -> None:
    state = {
        "Id": name,
        "LoadState": "loaded",
        "ActiveState": "inactive",
        "SubState": "dead",
        "UnitFileState": "static",
        "Type": "simple",
        **show,
    }
    row = audit.compare_unit(name, wanted, state)
    assert row.verdict == verdict, row
    assert says in row.found


def test_identity_decides_the_claimed_image(manifest: Manifest, clean: str) -> None:
    """Images carry /usr/lib/aurora/image.json; one claiming another tag is drift."""
    head, mark, rest = clean.partition(f"{observation.MARK}os-release\n")
    with_id = f"{observation.MARK}identity\n" + json.dumps({"tag": "2026.11-other"}) + "\n" + head
    rep = report(manifest, with_id + mark + rest)
    row = next(r for r in rep.rows if r.kind == "image")
    assert (row.found, row.verdict) == ("2026.11-other", "changed")
    unknown = next(r for r in report(manifest, clean).rows if r.kind == "image")
    assert unknown.verdict == "unknown" and not unknown.drift


def test_script_observes_real_files(tmp_path: Path) -> None:
    """The files part of the script, run by the local shell on real files."""
    conf = tmp_path / "etc" / "a.conf"
    conf.parent.mkdir()
    conf.write_bytes(b"x = 1\n")
    conf.chmod(0o640)
    (tmp_path / "link").symlink_to("etc/a.conf")
    (tmp_path / "empty").mkdir()
    rendered = {
        str(conf): {"sha256": hashlib.sha256(b"x = 1\n").hexdigest(), "mode": "0640"},
        str(tmp_path / "link"): {"link": "etc/a.conf"},
        str(tmp_path / "empty"): {"directory": "0755"},
        str(tmp_path / "gone"): {"sha256": "0" * 64, "mode": "0644"},
    }
    (tmp_path / "empty").chmod(0o755)
    manifest = Manifest(tag="t", rendered=rendered)
    assert subprocess.run(["sh", "-n", "-c", observation.script(manifest)]).returncode == 0
    run = subprocess.run(["sh", "-c", observation.script(manifest)], capture_output=True, text=True)
    seen = observation.parse(run.stdout)
    rows = {r.what: r for r in audit.compare(manifest, seen) if r.kind == "file"}
    assert [rows[p].verdict for p in rendered] == ["ok", "ok", "ok", "missing"]
    conf.write_bytes(b"x = 2\n")
    seen = observation.parse(
        subprocess.run(
            ["sh", "-c", observation.script(manifest)], capture_output=True, text=True
        ).stdout
    )
    assert audit.compare_file(str(conf), rendered[str(conf)], seen.files[str(conf)]).drift


def test_table_shows_drift_only_unless_asked(manifest: Manifest) -> None:
    rep = report(manifest, (DATA / "drift.txt").read_text())
    table = audit.format_table(rep)
    assert len(table.splitlines()) == 1 + 5 + 1
    assert "sha256:c82836089ab5 " in table + " "
    assert len(audit.format_table(rep, everything=True).splitlines()) == len(rep.rows) + 2


def test_verity_root_hash_is_compared(manifest: Manifest, clean: str) -> None:
    """Images with a dm-verity root record its hash; the host's kernel must boot it."""
    verity = replace(manifest, root_hash="ab" * 32)
    head, mark, rest = clean.partition(f"{observation.MARK}files\n")
    booted = head + f"{observation.MARK}cmdline\nroot=/dev/mapper/root roothash={'ab' * 32} ro\n"
    assert report(verity, booted + mark + rest).ok
    other = booted.replace("ab" * 32, "cd" * 32)
    row = drifted(report(verity, other + mark + rest))[
        "roothash= the kernel booted with (dm-verity root)"
    ]
    assert row.found == "cd" * 32
    rows = drifted(report(verity, clean))
    assert "not verity-protected" in rows["roothash= the kernel booted with (dm-verity root)"].found


def test_config_layer_hash_is_compared(manifest: Manifest, clean: str) -> None:
    """A layered image records its config layer's hash; a host booted with another
    layer (another config under the same base) is drift."""
    layered = replace(manifest, root_hash="ab" * 32, config_hash="ef" * 32)
    head, mark, rest = clean.partition(f"{observation.MARK}files\n")
    words = f"roothash={'ab' * 32} aurora.config_hash={'ef' * 32}"
    booted = head + f"{observation.MARK}cmdline\nroot=/dev/mapper/root {words} ro\n"
    assert report(layered, booted + mark + rest).ok
    other = booted.replace("ef" * 32, "01" * 32)
    rows = drifted(report(layered, other + mark + rest))
    what = "aurora.config_hash= the kernel booted with (dm-verity config layer)"
    assert rows[what].found == "01" * 32
    assert "roothash= the kernel booted with (dm-verity root)" not in rows
