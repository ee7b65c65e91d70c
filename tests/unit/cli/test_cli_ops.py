"""The operator commands' CLI: arguments, one-line errors, audit over a real sshd.

The audit test points `aurora-image audit` at a throwaway OpenSSH server on
loopback (tests/sshd.py), so the script really runs in a shell over ssh;
the host is this build machine, which is not the image, so it must drift.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder.cli.main import build_parser, main
from builder.spec.model import load_spec
from builder.vm import session as vm_session
from builder.vm.disks import volume_labels
from tests.fake_images import make_image
from tests.paths import REPO_ROOT
from tests.sshd import missing_tools, running_sshd

TAG = "2026.11-cccccccccccc"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AURORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AURORA_IMAGES", str(tmp_path / "store"))
    return tmp_path


def test_ssh_arguments_keep_the_command_whole() -> None:
    args = build_parser().parse_args(["ssh", TAG, "--", "systemctl", "status", "--no-pager"])
    assert (args.tag, args.command) == (TAG, ["systemctl", "status", "--no-pager"])


def test_vm_without_a_terminal_needs_keep(cache: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["vm"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("aurora-image: ") and "--keep" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [["vm", "--stop"], ["ssh", "--", "true"], ["audit", "vm"]])
def test_no_running_vm_is_a_one_line_error(
    cache: Path, capsys: pytest.CaptureFixture, argv: list[str]
) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no VM is running" in err and "aurora-image vm --keep" in err


def test_stale_state_is_dropped(cache: Path) -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    vms = vm_session.vms_dir(cache / "cache")  # where the CLI looks, AURORA_CACHE being that
    path = vm_session.state_path(vms, TAG)
    path.parent.mkdir(parents=True)
    state = {
        "tag": TAG,
        "image": "/nowhere",
        "pid": finished.pid,
        "ports": {"ssh": 1},
        "key": "/nowhere/key",
        "serial_log": "/nowhere/serial.log",
        "workdir": "/nowhere",
        "started": 0.0,
    }
    path.write_text(json.dumps(state))
    assert vm_session.running(vms) == []
    assert not path.exists()
    # A live pid that is not a keeper does not count either (pids are reused).
    path.write_text(json.dumps({**state, "pid": os.getpid()}))
    assert vm_session.read_state(vms, TAG) is None


def test_vm_keep_json_boots_the_image_with_its_specs_volumes(
    cache: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vm TAG --keep --json` without a terminal: the keeper is started (as the smoke
    suite starts its session VM, tests/vm/conftest.py) for that image with the
    volumes its spec mounts, and the state is printed for scripts."""
    make_image(cache / "store", TAG, built_at=1.0)
    calls = []
    state = vm_session.VmState(
        tag=TAG, image=str(cache / "store" / TAG), pid=1, ports={"ssh": 2222, "http": 8080},
        key="/k/id_ed25519", serial_log="/k/serial.log", workdir="/k", started=0.0,
    )  # fmt: skip

    def start(vms: Path, image_dir: Path, labels: list[str], **kw: object) -> vm_session.VmState:
        calls.append((vms, image_dir, labels, sorted(kw)))
        return state

    monkeypatch.setattr(vm_session, "start", start)
    assert main(["vm", TAG, "--keep", "--json"]) == 0
    spec = load_spec(REPO_ROOT / "hosts" / "aurora.yml")
    assert calls == [
        (vm_session.vms_dir(cache / "cache"), cache / "store" / TAG, volume_labels(spec), ["note"])
    ]
    assert volume_labels(spec) == ["aurora-data", "aurora-project"]
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(state.to_json()))
    assert printed["ssh"][-1] == "127.0.0.1" and "2222" in printed["ssh"]


@pytest.mark.skipif(bool(missing_tools()), reason=f"needs {missing_tools()}")
def test_audit_over_ssh(cache: Path, capsys: pytest.CaptureFixture) -> None:
    make_image(cache / "store", TAG, built_at=1.0)
    with running_sshd(cache / "ssh") as (server,):
        config = cache / "ssh_config"
        config.write_text(
            f"Host *\n  UserKnownHostsFile {server.known_hosts}\n  StrictHostKeyChecking yes\n"
        )
        host = f"{server.user}@{server.host}"
        common = ["--ssh-port", str(server.port), "--identity", str(server.client_key)]
        common += ["--ssh-config", str(config)]
        # This machine carries no image identity: the audit must be told which image.
        assert main(["audit", host, *common]) == 1
        err = capsys.readouterr().err
        assert "does not say which image it runs" in err and "--image" in err
        assert main(["audit", host, *common, "--image", TAG, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["image"] == TAG and report["ok"] is False
    rows = {row["what"]: row for row in report["rows"]}
    assert rows["/etc/systemd/system/aurora-dashboard.service"]["verdict"] == "missing"
    assert rows["dashboard venv"]["verdict"] == "missing"
    assert report["drift"] == sum(
        1 for r in report["rows"] if r["verdict"] not in ("ok", "unknown")
    )


def test_audit_unreachable_host_is_one_line(cache: Path, capsys: pytest.CaptureFixture) -> None:
    from tests.sshd import free_port

    make_image(cache / "store", TAG, built_at=1.0)
    argv = ["audit", "127.0.0.1", "--ssh-port", str(free_port()), "--image", TAG]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("aurora-image: root@127.0.0.1:") and err.count("\n") == 1
