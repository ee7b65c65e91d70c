"""builder.host.remote.Remote, the one command runner, against a real sshd on loopback.

What the VM harness relies on besides audit, probe and release: a command's
whole outcome (status, stdout, stderr, ssh's own 255) without an exception,
a typed timeout, lenient decoding, and stopping a ControlMaster it started.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.host.remote import Completed, Remote, RemoteError, RemoteTimeout
from tests.sshd import SshServer, free_port, missing_tools, running_sshd

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"missing {missing_tools()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    with running_sshd(tmp_path_factory.mktemp("sshd")) as (one,):
        yield one


def _remote(server: SshServer, **kw: object) -> Remote:
    options: dict[str, object] = {
        "host": server.host,
        "user": server.user,
        "port": server.port,
        "identity": server.client_key,
        "known_hosts": server.known_hosts,
        "host_key_checking": "yes",
    }
    return Remote(**(options | kw))  # type: ignore[arg-type]


def test_call_returns_status_stdout_and_stderr(server: SshServer) -> None:
    done = _remote(server).call("echo out; echo err >&2; exit 3", timeout=30)
    assert done == Completed(3, "out\n", "err\n")


def test_call_decodes_stray_bytes_leniently(server: SshServer) -> None:
    done = _remote(server).call(r"printf '\377ok\n'", timeout=30)
    assert done.status == 0 and done.stdout == "\ufffdok\n"


def test_ssh_failure_is_status_255_for_call_and_an_error_for_execute(
    server: SshServer, tmp_path: Path
) -> None:
    stranger = tmp_path / "known_hosts"
    stranger.write_text(f"[{server.host}]:{server.port} ssh-ed25519 {'A' * 68}\n")
    remote = _remote(server, known_hosts=stranger)
    done = remote.call("true", timeout=30)
    assert done.status == 255 and "Host key verification failed" in done.stderr
    with pytest.raises(RemoteError, match=r"ssh failed: Host key verification failed"):
        remote.execute("true", timeout=30)


def test_timeout_is_typed_and_still_a_remote_error(server: SshServer) -> None:
    start = time.monotonic()
    with pytest.raises(RemoteTimeout, match=r"did not finish within 1 s") as info:
        _remote(server).call("sleep 20", timeout=1)
    assert isinstance(info.value, RemoteError) and isinstance(info.value, TimeoutError)
    assert time.monotonic() - start < 10


def test_connect_timeout_none_leaves_it_to_the_config() -> None:
    assert "ConnectTimeout=10" in Remote(host="h").argv("true")
    assert not any("ConnectTimeout" in a for a in Remote(host="h", connect_timeout=None).argv())


def test_stop_master_ends_the_control_master(server: SshServer, tmp_path: Path) -> None:
    mux = tmp_path / "mux"
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host {server.host}\n  ControlMaster auto\n  ControlPath {mux}\n  ControlPersist 60s\n"
    )
    remote = _remote(server, ssh_config=config)
    assert remote.run("echo first", timeout=30) == "first\n"
    assert mux.is_socket()  # the master outlives the command
    assert remote.run("echo second", timeout=30) == "second\n"
    remote.stop_master()
    deadline = time.monotonic() + 10
    while mux.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not mux.exists()
    remote.stop_master()  # none running: a no-op


def test_unreachable_host_is_one_error_line(tmp_path: Path) -> None:
    remote = Remote(host="127.0.0.1", port=free_port(), known_hosts=tmp_path / "kh",
                    host_key_checking="accept-new", connect_timeout=2)  # fmt: skip
    with pytest.raises(RemoteError, match=r"root@127\.0\.0\.1:\d+: ssh failed: .*refused"):
        remote.execute("true", timeout=30)
