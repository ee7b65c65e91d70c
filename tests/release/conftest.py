"""Session services for the release tests: a real Glance, the Nova double, a
clouds.yaml naming both, and the operator's ssh key and config.

A failing test's report carries the tail of Glance's log, the double's last
requests and the VM console, because "rebuild went to ERROR" alone is
undebuggable.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.image_choice import chosen_image
from tests.release.glance import GlanceServer
from tests.release.nova import NovaDouble, serial_tail

CLOUD = "aurora-test"
SERVER = "aurora-test"
_live: dict[str, GlanceServer | NovaDouble] = {}


def boot_image_dir() -> Path:
    """The image the real rebuild boots: the one this run built (tests/image_choice.py)."""
    return chosen_image()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The services' own tests first: they expect the session's server as created
    (nobody has promoted to it); the end-to-end release scenario changes that."""
    items.sort(key=lambda item: item.path.name == "test_release.py")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    glance = _live.get("glance")
    if isinstance(glance, GlanceServer):
        report.sections.append((f"glance log {glance.log_file}", glance.log_tail(40)))
    nova = _live.get("nova")
    if isinstance(nova, NovaDouble):
        last = "\n".join(f"{m} {p}" for m, p in nova.requests[-15:])
        report.sections.append(("nova double: last requests", last))
        report.sections.append((f"nova double: console {nova.serial_log}", serial_tail(nova)))


@pytest.fixture(scope="session")
def glance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlanceServer]:
    server = GlanceServer(tmp_path_factory.mktemp("glance"))
    server.start()
    _live["glance"] = server
    yield server
    _live.pop("glance", None)
    server.stop()


@pytest.fixture(scope="session")
def operator_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh ed25519 key pair (private key path; ``.pub`` beside it)."""
    key = tmp_path_factory.mktemp("operator") / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "aurora-operator", "-f", str(key)],
        check=True, stdin=subprocess.DEVNULL, capture_output=True,
    )  # fmt: skip
    return key


@pytest.fixture(scope="session")
def nova(
    glance: GlanceServer, operator_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NovaDouble]:
    pubkey = operator_key.with_suffix(".pub").read_text()
    double = NovaDouble(
        tmp_path_factory.mktemp("nova"),
        glance_endpoint=glance.endpoint,
        name=SERVER,
        credentials={"ssh.authorized_keys.root": pubkey},
        ssh_key=operator_key,
    )
    _live["nova"] = double
    yield double
    _live.pop("nova", None)
    double.close()


@pytest.fixture(scope="session")
def clouds_yaml(
    glance: GlanceServer, nova: NovaDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A clouds.yaml for cloud ``aurora-test``; OS_CLIENT_CONFIG_FILE and OS_CLOUD
    point at it for the session (other OS_* variables are hidden meanwhile)."""
    path = tmp_path_factory.mktemp("openstack") / "clouds.yaml"
    cloud = {
        "auth_type": "none",
        "image_endpoint_override": glance.endpoint,
        "compute_endpoint_override": nova.endpoint,
    }
    path.write_text(yaml.safe_dump({"clouds": {CLOUD: cloud}}))
    with pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith("OS_")]:
            env.delenv(name)
        env.setenv("OS_CLIENT_CONFIG_FILE", str(path))
        env.setenv("OS_CLOUD", CLOUD)
        yield path


@pytest.fixture(scope="session")
def ssh_config(
    nova: NovaDouble, operator_key: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``ssh -F`` file: the server's address (127.0.0.1) goes to its forwarded port.

    Host keys are checked (accept-new) against a known_hosts file in the tmp dir,
    never the user's.
    """
    tmp = tmp_path_factory.mktemp("ssh")
    path = tmp / "ssh_config"
    path.write_text(
        f"Host 127.0.0.1 {SERVER}\n"
        f"  HostName 127.0.0.1\n"
        f"  Port {nova.ssh_port}\n"
        f"  User root\n"
        f"  IdentityFile {operator_key}\n"
        f"  IdentitiesOnly yes\n"
        f"  BatchMode yes\n"
        f"  UserKnownHostsFile {tmp / 'known_hosts'}\n"
        f"  StrictHostKeyChecking accept-new\n"
        f"  ConnectTimeout 15\n"
        f"  LogLevel ERROR\n"
    )
    return path
