"""`aurora-image status` against a real Glance and the Nova double, and
`aurora-image logs` over the logs a real smoke-suite run leaves beside its image.

The release fixtures (real Glance on loopback, the Nova v2.1 double, an image
store) come from tests/unit/conftest.py; nothing here rebuilds
or boots anything. The smoke-suite run is the real tests/vm/conftest.py with
tests that need the image but no VM (as tests/unit/image/test_store.py does).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from builder.cli.main import main
from builder.image.logs import SMOKE_LOG
from builder.release.cloud import Cloud
from tests.fake_images import make_image
from tests.paths import REPO_ROOT
from tests.release.glance import GlanceServer
from tests.release.nova import NovaDouble
from tests.unit.release.test_release import three_releases

REPO = REPO_ROOT


def clouds_yaml(store: Path, glance: GlanceServer, nova: NovaDouble) -> Path:
    path = store.parent / "clouds.yaml"
    path.write_text(json.dumps({"clouds": {"unit": {
        "auth_type": "none", "image_endpoint_override": glance.endpoint,
        "compute_endpoint_override": nova.endpoint}}}))  # fmt: skip
    return path


def test_status_shows_what_is_live_where(
    store: Path, cloud: Cloud, nova: NovaDouble, glance: GlanceServer,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    ids = three_releases(store, cloud, nova)  # 2026.11-cccc live, attested here
    make_image(store, "2026.11-dddd", built_at=time.time() + 3600)  # newest, untested
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds_yaml(store, glance, nova)))
    name = nova.server.name

    code = main(["status", "--json", "--os-cloud", "unit", "--server", name])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    (server,) = out["servers"]
    assert server["server"] == name and server["cloud"] == "unit"
    assert server["state"] == "ACTIVE"
    assert server["tag"] == "2026.11-cccc" and server["image"] == "aurora-2026.11-cccc"
    assert server["image_id"] == ids["2026.11-cccc"]
    assert server["attested"] is True and "local store" in server["attestation"]
    assert "tester@unit" in server["promoted"]
    assert server["error"] is None
    assert out["newest"] == {
        "tag": "2026.11-dddd", "built": out["newest"]["built"], "attested": False, "live_on": [],
    }  # fmt: skip
    assert out["vms"] == [] and out["store"] == str(store)

    # --cloud is the same option, and it may stand before the command.
    code = main(["--cloud", "unit", "status", "--server", name])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    text = captured.out.splitlines()
    assert text[0].startswith(f"server {name} (cloud unit, id ")
    assert text[1].split() == ["state:", "ACTIVE"]
    assert text[2].startswith("  live:      2026.11-cccc  (Glance aurora-2026.11-cccc, ")
    assert text[3].startswith("  attested:  yes: ")
    newest = next(line for line in text if line.startswith("  newest:"))
    assert "2026.11-dddd" in newest and "attested no" in newest and "not live anywhere" in newest


def test_status_without_the_cloud_still_shows_this_machine(
    store: Path, cloud: Cloud, nova: NovaDouble, glance: GlanceServer,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    make_image(store, "2026.11-eeee", built_at=time.time())
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds_yaml(store, glance, nova)))
    nova.down()
    try:
        code = main(["status", "--json", "--os-cloud", "unit", "--server", nova.server.name])
    finally:
        nova.up()
    captured = capsys.readouterr()
    assert code == 1, captured.err
    out = json.loads(captured.out)
    assert out["servers"][0]["error"].startswith("cloud unit: ")
    assert out["newest"]["tag"] == "2026.11-eeee"
    code = main(["status", "--local", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["servers"] == []


# -- logs ---------------------------------------------------------------------------


def test_logs_gathers_build_smoke_and_serial_logs(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = "2026.11-ffffffffffff"
    image = make_image(store, tag, built_at=time.time())
    (image / "build.log").write_text("mkosi: step one\nmkosi: All done.\n")
    # A smoke-suite run with one failing test, through the real VM-suite conftest.
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(REPO / "tests" / "vm" / "conftest.py", suite / "conftest.py")
    (suite / "test_fake.py").write_text(textwrap.dedent("""
        def test_fine(image_dir):
            assert image_dir.name

        def test_broken(image_dir):
            assert 1 + 1 == 3, "arithmetic drifted"
    """))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "AURORA_IMAGE": tag}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
        cwd=suite, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    report = (image / SMOKE_LOG).read_text()
    assert report.startswith(f"smoke suite on {tag}, finished ")
    assert "passed   test_fake.py::test_fine" in report
    assert "failed   test_fake.py::test_broken" in report
    assert "arithmetic drifted" in report

    code = main(["logs", tag])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"==> build (mkosi): {image / 'build.log'} <==\nmkosi: step one\n" in out
    assert f"==> last smoke-suite run: {image / SMOKE_LOG} <==" in out
    assert "arithmetic drifted" in out
    assert "==> serial console of the smoke suite's VM: none yet" in out

    code = main(["logs", tag, "--only", "build", "--tail", "1", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    assert out["tag"] == tag
    assert [(log["kind"], log["text"]) for log in out["logs"]] == [("build", "mkosi: All done.")]


def test_logs_of_an_image_without_any_is_one_line(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_image(store, "2026.11-000000000000", built_at=time.time())
    (store / "2026.11-000000000000" / "build.log").unlink(missing_ok=True)
    code = main(["logs", "2026.11-000000000000"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("\n") == 1 and "has no logs yet" in err


def test_status_asks_every_deploy_target(
    store: Path, cloud: Cloud, nova: NovaDouble, glance: GlanceServer, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    three_releases(store, cloud, nova)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds_yaml(store, glance, nova)))
    spec = tmp_path / "targets.yml"
    spec.write_text(
        f"base: {REPO / 'hosts' / 'aurora.yml'}\n"
        "deploy:\n  targets:\n"
        f"    test: {{server: {nova.server.name}, role: staging, cloud: unit}}\n"
    )
    assert main(["status", "--json", "--spec", str(spec)]) == 1  # the shipped targets: no cloud
    servers = {s["target"]: s for s in json.loads(capsys.readouterr().out)["servers"]}
    assert servers["test"]["tag"] == "2026.11-cccc" and servers["test"]["error"] is None
    assert set(servers) >= {"test", "staging", "production"}
    assert all(servers[t]["error"] for t in ("staging", "production"))
