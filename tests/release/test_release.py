"""End to end: promote, automatic rollback, manual rollback, releases, prune,
secrets, through the real CLI, a real Glance and the Nova double's real VMs.

A is the image this run built (AURORA_IMAGE, else the tag `make image` recorded; never
the newest in the store), attested by this run's smoke suite (`make test` runs this suite
after tests/vm, whose session end writes the attestation).
B is built here from a spec overlay whose dashboard entry does not exist, so
Panel can never start; its attestation is written by the test: it stands for
an image that passed under QEMU but fails in production. B is built into its
own store under the build cache, so it never becomes the project's newest
image, and an unchanged overlay reuses it on the next run.

Boots: A (promote), B (fails), A (automatic rollback), A (rollback by tag; a
first attempt whose rebuild the double fails boots nothing).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import openstack
import pytest

from builder.cli.main import main
from builder.image.build import build
from builder.image.inputs import REPO
from builder.image.store import write_attestation
from builder.paths import Paths
from builder.spec.model import load_spec
from tests.image_choice import attestation_problem, chosen_image
from tests.release.conftest import CLOUD, SERVER
from tests.release.nova import NovaDouble

pytestmark = pytest.mark.vm

OPERATOR = "release-test@aurora"
BROKEN_OVERLAY = f"""\
# The default spec, but Panel is pointed at an entry that does not exist:
# nginx answers 502 and Panel restarts forever (Restart=always).
base: {REPO / "hosts" / "aurora.yml"}
dashboard:
  app:
    path: {REPO / "app"}
  entry: no-such-dashboard.py
"""


STEP_SUMMARY = re.compile(r": (done in|failed after) [0-9.]+ s$")


def one_error(err: str) -> str:
    """The error is one line; the rest of stderr is only the steps' summary lines."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("aurora-image: ")]
    assert len(errors) == 1, err
    assert all(STEP_SUMMARY.search(line) for line in lines if line not in errors), err
    return errors[0]


@pytest.fixture(scope="module")
def image_a() -> Path:
    """The image this run built and its smoke suite attested (tests/image_choice.py)."""
    path = chosen_image()
    problem = attestation_problem(path)
    if problem:
        pytest.fail(problem)
    return path


@pytest.fixture(scope="module")
def image_b() -> Path:
    """The broken-dashboard image, built (or reused) in its own store, then attested."""
    paths = Paths.from_env()  # this suite's edge: the operator's caches
    work = paths.build_cache / "release-test"
    work.mkdir(parents=True, exist_ok=True)
    overlay = work / "broken-dashboard.yml"
    overlay.write_text(BROKEN_OVERLAY)
    built = build(load_spec(overlay), replace(paths, images=work / "images"), progress=False)
    assert built.path.parent != paths.images
    now = time.time()
    tests = {"tests/release/test_release.py::stand-in for a passing smoke run": "passed"}
    write_attestation(built.path, passed=True, tests=tests, started=now, finished=now)
    return built.path


@pytest.fixture
def cli(
    clouds_yaml: Path,
    nova: NovaDouble,
    operator_key: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator:
    """Run `aurora-image ...` in process: (exit code, parsed JSON or stdout, stderr)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("AURORA_OPERATOR", OPERATOR)
    server = ["--cloud", CLOUD, "--server", SERVER]
    probe = nova.probe_argv(operator_key)

    def run(*argv: str, probing: bool = False, plain: bool = False) -> tuple[int, Any, str]:
        capsys.readouterr()
        extra = [] if plain else server + (probe if probing else [])
        code = main([*argv, *extra])
        out, err = capsys.readouterr()
        try:
            parsed: object = json.loads(out)
        except ValueError:
            parsed = out
        return code, parsed, err

    yield run


def _glance() -> openstack.connection.Connection:
    return openstack.connect()


def test_promote_fail_rollback_releases_prune(
    cli: Callable[..., tuple[int, Any, str]],
    image_a: Path,
    image_b: Path,
    nova: NovaDouble,
    operator_key: Path,
    tmp_path: Path,
) -> None:
    a, b = image_a.name, image_b.name
    before = len(nova.rebuilds)  # the services' own tests may have rebuilt the server

    # 1. Promote A: uploaded, rebuilt, probed, soaked (probed again for 30 s), recorded live.
    code, out, err = cli("promote", a, "--json", "--soak", "30s", probing=True)
    assert code == 0, err
    assert re.search(r"^soak aurora-\S+ for 30 s: done in", err, re.M), err
    assert "soak passed" in out["message"]
    assert out["attempts"][0]["outcome"] == "live", out
    checks = {c["name"]: c["ok"] for c in out["attempts"][0]["probe"]["checks"]}
    names = ("ssh", "boot", "services", "failed-units", "dashboard", "audit")
    assert checks == dict.fromkeys(names, True)
    conn = _glance()
    a_image = conn.image.find_image(f"aurora-{a}", ignore_missing=False)
    assert nova.server.image_id == a_image.id and nova.rebuilds[before:] == [a_image.id]
    assert a_image.visibility == "private" and set(a_image.tags) == {"aurora", a}
    assert a_image.hw_machine_type == "q35" and a_image.properties["hw_firmware_type"] == "uefi"
    assert a_image.properties["aurora_live_server"] == SERVER
    assert a_image.properties["aurora_soak_verdict"] == "passed"

    # 2. Promote B: its dashboard never answers -> automatic rollback to A, exit 3.
    code, out, err = cli("promote", str(image_b), "--json", probing=True)
    assert code == 3, err
    first, back = out["attempts"]
    assert first["image"] == f"aurora-{b}" and first["outcome"] == "probe-failed"
    failed = [c for c in first["probe"]["checks"] if not c["ok"]]
    assert [c["name"] for c in failed] == ["dashboard"], failed
    assert "502" in failed[0]["detail"] or "restart loop" in failed[0]["detail"]
    assert back["image"] == f"aurora-{a}" and back["outcome"] == "live"
    assert "rolled back automatically" in one_error(err)
    assert f"runs aurora-{a} again" in err
    b_image = conn.image.find_image(f"aurora-{b}", ignore_missing=False)
    assert nova.rebuilds[-2:] == [b_image.id, a_image.id]
    assert nova.server.image_id == a_image.id and nova.server.status == "ACTIVE"

    # 3. Default rollback: B was never live, so there is nothing before A; server untouched.
    rebuilds = len(nova.rebuilds)
    code, _, err = cli("rollback", probing=True)
    assert code == 1 and "no image was live on" in err and len(nova.rebuilds) == rebuilds

    # 4. Rollback to a tag whose rebuild fails: nothing to go back to, the state is said.
    nova.fail_next_rebuild("No valid host was found.")
    code, out, err = cli("rollback", a, "--json", probing=True)
    assert code == 4, err
    assert out["attempts"][0]["outcome"] == "rebuild-failed"
    assert "fault: No valid host was found." in one_error(err)
    assert err.rstrip().endswith(f"{SERVER} is now ERROR on aurora-{a}")
    assert conn.image.get_image(a_image.id).properties["aurora_live_server"] == SERVER

    # 5. Manual rollback to the tag again (Nova rebuilds from ERROR): rebuilt and probed.
    code, out, err = cli("rollback", a, "--json", probing=True)
    assert code == 0, err
    assert out["attempts"][0]["outcome"] == "live" and len(nova.rebuilds) == rebuilds + 2
    assert nova.server.status == "ACTIVE"

    # 6. Secrets on the live server: names only, never a value.
    key = operator_key.with_suffix(".pub").read_text().split()[1]
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        f"Host aurora-live\n  HostName 127.0.0.1\n  Port {nova.ssh_port}\n"
        f"  IdentityFile {operator_key}\n  UserKnownHostsFile {tmp_path / 'known_hosts'}\n"
        "  StrictHostKeyChecking accept-new\n"
    )
    code, out, err = cli(
        "secrets", "check", "aurora-live", "--ssh-config", str(ssh_config),
        "--ssh-port", str(nova.ssh_port), "--json", plain=True,
    )  # fmt: skip
    states = {c["name"]: c["state"] for c in out["credentials"]}
    assert states["ssh.authorized_keys.root"] == "present", out
    assert states["tailscale.authkey"] == "missing" and code == 1
    assert out["credstore"]["private"] is True
    assert "tailscale.authkey" in one_error(err)
    assert key not in json.dumps(out) and key not in err

    # 7. Releases: what is live, who promoted, the history of each.
    code, out, err = cli("releases", "--json")
    assert code == 0, err
    assert out["server"]["image"] == f"aurora-{a}"
    rows = {r["tag"]: r for r in out["releases"]}
    assert rows[a]["live"] and rows[a]["last_good"] and rows[a]["promoted_by"] == OPERATOR
    assert [(e["action"], e["outcome"]) for e in rows[a]["history"]] == [
        ("promote", "live"), ("auto-rollback", "live"),
        ("rollback", "rebuild-failed"), ("rollback", "live"),
    ]  # fmt: skip
    assert rows[b]["glance"] == "ready" and not rows[b]["live"]
    assert rows[b]["last"]["outcome"] == "probe-failed"
    assert rows[b]["local"] is False  # B lives in its own store, not the project's

    # 8. Prune Glance to nothing: the live image stays; B (never live) goes.
    code, out, err = cli("glance-prune", "--keep", "0", "--json")
    assert code == 0, err
    assert out["removed"] == [f"aurora-{b}"]
    assert out["protected"] == {f"aurora-{a}": f"live on {SERVER}"}
    assert [i.name for i in conn.image.images(tag=["aurora"])] == [f"aurora-{a}"]
