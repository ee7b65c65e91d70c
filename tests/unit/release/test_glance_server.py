"""The test Glance under concurrent writers: no request fails because another
one is writing at the same time.

Without tests/release/glance_app.py (plain ``glance.wsgi.api``, oslo.db's
deferred BEGIN on SQLite) this scenario failed 14 of 20 rounds with HTTP 500 and
Glance logged "database is locked" 99 times; that is what made
test_an_interrupted_upload_is_never_used_and_is_replaced fail under load.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import openstack
import pytest
from openstack.image.v2.image import Image

from builder.release.cloud import Cloud
from tests.release.glance import GlanceServer

CLIENTS = 4
ROUNDS = 5


@pytest.fixture(scope="module")
def glance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlanceServer]:
    server = GlanceServer(tmp_path_factory.mktemp("glance"))
    server.start()
    yield server
    server.stop()


def _broken_upload_then_delete(endpoint: str, client: int, errors: list[str]) -> None:
    """What a promote does after a ^C: the upload is cut off, the next run deletes it
    while Glance may still be cleaning up after the broken stream."""
    conn = openstack.connect(auth_type="none", image_endpoint_override=endpoint)
    cloud = Cloud(conn, "unit")
    for n in range(ROUNDS):
        try:
            image = cloud.create_image(
                f"race-{client}-{n}", disk_format="qcow2", tags=["race"], properties={}
            )

            def cut() -> Iterator[bytes]:
                yield b"QFI\xfb" + b"\0" * 4096
                raise ConnectionError("operator pressed ^C")

            with pytest.raises(Exception):  # noqa: B017 - whatever the SDK makes of it
                Image.existing(id=image.id).upload(conn.image, data=cut())
            cloud.delete_image(image.id)
        except Exception as e:  # collected, asserted below
            errors.append(f"client {client} round {n}: {e}")


def test_concurrent_writers_wait_instead_of_failing(glance: GlanceServer) -> None:
    errors: list[str] = []
    threads = [
        threading.Thread(target=_broken_upload_then_delete, args=(glance.endpoint, c, errors))
        for c in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, "\n".join(errors)
    log = Path(glance.log_file).read_text(errors="replace")
    assert "database is locked" not in log
    conn = openstack.connect(auth_type="none", image_endpoint_override=glance.endpoint)
    assert list(conn.image.images(tag=["race"])) == []
