"""Fixtures shared by the release unit tests: a real Glance, the Nova double, a store.

Glance is the real PyPI service on loopback (tests/release/glance.py), one
per test module; the Nova double speaks Nova v2.1 over a real socket.
A module may define a fixture of the same name to replace one of these.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openstack
import pytest

from builder.release import meta as release_meta
from builder.release.cloud import Cloud
from builder.release.glance import glance_images
from tests.release.glance import GlanceServer
from tests.release.nova import NovaDouble


@pytest.fixture(scope="module")
def glance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlanceServer]:
    server = GlanceServer(tmp_path_factory.mktemp("glance"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def nova(glance: GlanceServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaDouble]:
    double = NovaDouble(tmp_path_factory.mktemp("nova"), glance_endpoint=glance.endpoint)
    yield double
    double.close()


@pytest.fixture(autouse=True)
def _fast_rebuild_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Nova double here boots nothing, so a rebuild ends within a second: waiting
    for it polls every 0.1 s, not every 2 s as for a real server (Cloud.rebuild_poll)."""
    monkeypatch.setattr(Cloud, "rebuild_poll", 0.1)


@pytest.fixture
def cloud(glance: GlanceServer, nova: NovaDouble) -> Iterator[Cloud]:
    """A clean Glance (no aurora images) and a connection to it and the double."""
    glance.start()
    nova.up()
    conn = openstack.connect(
        auth_type="none",
        image_endpoint_override=glance.endpoint,
        compute_endpoint_override=nova.endpoint,
    )
    c = Cloud(conn, "unit")
    for image in [*glance_images(c), *release_meta.companions(c)]:
        c.delete_image(image.id)
    yield c
    glance.start()
    nova.up()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    monkeypatch.setenv("AURORA_IMAGES", str(root))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("AURORA_OPERATOR", "tester@unit")
    return root
