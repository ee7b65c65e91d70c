"""The container tier: the built image's own tree, read-only, and its own programs
run in it under systemd-nspawn (builder/image/root.py), for everything that needs
no kernel of its own: unit files, the rendered configs taken by the programs that
read them (nginx, sshd, msmtp), the on-host programs against files. Seconds, not
a QEMU boot; what needs a booted host stays in tests/vm.

Which image: the one this run built (tests/image_choice.py), as for the VM suites.
The tree is mounted once per session; each test gets its own writable scratch
layer over it (``container``), so what one test writes no other sees, and the
image's bytes never change.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.image.root import Container, image_root
from builder.image.store import is_image
from builder.render.engine import render
from builder.render.tree import Tree
from builder.spec.model import HostSpec, load_spec
from tests.image_choice import chosen_image
from tests.mailbox import Mailbox, running_mailbox
from tests.paths import REPO_ROOT

SPEC = REPO_ROOT / "hosts" / "aurora.yml"


def unit_directives(container: Container, unit: str) -> dict[str, list[str]]:
    """Every `Key=value` of `unit` as systemd reads it in the image (drop-ins
    included, `systemd-analyze cat-config`), values in file order."""
    text = container.succeed(["systemd-analyze", "cat-config", f"systemd/system/{unit}"])
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


@pytest.fixture(scope="session")
def image_dir() -> Path:
    path = chosen_image()
    assert is_image(path), f"{path} holds no built image"
    return path


@pytest.fixture(scope="package")
def root(image_dir: Path) -> Iterator[Path]:
    """The image's tree as its booted host mounts it (read-only), unmounted when this
    tier's tests are done (not held through a VM suite in the same session)."""
    with image_root(image_dir) as tree:
        yield tree


@pytest.fixture
def container(root: Path) -> Iterator[Container]:
    """The image's programs in the image's tree, over a writable layer of this test's own."""
    with Container(root) as box:
        yield box


@pytest.fixture(scope="session")
def spec() -> HostSpec:
    return load_spec(SPEC)


@pytest.fixture(scope="session")
def rendered(spec: HostSpec) -> Tree:
    return render(spec)


@pytest.fixture(scope="session")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    with running_mailbox() as relay:
        yield relay
