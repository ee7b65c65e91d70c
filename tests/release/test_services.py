"""The release tests' services are real, and the Nova double behaves like Nova.

Glance is exercised through openstacksdk exactly as the release tooling uses
it. The last test boots the image this run built (tests/image_choice.py) through two
real rebuilds (one VM at a time) and prints the timings the report quotes.
"""

from __future__ import annotations

import shlex
import subprocess
import time
import uuid
from pathlib import Path

import openstack
import pytest
from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as os_exc

from builder.image.store import file_digest
from builder.release.convert import cached_qcow, convert
from builder.retry import retry
from tests.release.conftest import SERVER, boot_image_dir
from tests.release.glance import GlanceServer
from tests.release.nova import VOLUMES, NovaDouble

STFC_PROPERTIES = {
    "hw_machine_type": "q35",
    "hw_firmware_type": "uefi",
    "hw_disk_bus": "scsi",
    "hw_scsi_model": "virtio-scsi",
    "hw_qemu_guest_agent": "yes",
}


def _connect() -> openstack.connection.Connection:
    """Through clouds.yaml and OS_CLOUD, as the tool connects."""
    return openstack.connect()


def _upload(conn: openstack.connection.Connection, path: Path, name: str, **props: str) -> str:
    image = conn.image.create_image(
        name=name,
        filename=str(path),
        disk_format="qcow2",
        container_format="bare",
        visibility="private",
        tags=["aurora", name],
        wait=True,
        **props,
    )
    return str(image.id)


@pytest.fixture
def small_qcow2(tmp_path: Path) -> Path:
    path = tmp_path / "small.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 256k", str(path)],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


@pytest.mark.usefixtures("clouds_yaml")
def test_glance_upload_download_properties_and_tags(
    glance: GlanceServer, small_qcow2: Path, tmp_path: Path
) -> None:
    conn = _connect()
    image_id = _upload(conn, small_qcow2, "aurora-r1-small", aurora_digest="abc", **STFC_PROPERTIES)
    image = conn.image.get_image(image_id)  # create_image(wait=True) returns a stale object
    assert image.status == "active"
    assert image.size == small_qcow2.stat().st_size
    assert (image.hash_algo, image.hash_value) == ("sha512", file_digest(small_qcow2, "sha512"))
    assert sorted(image.tags) == ["aurora", "aurora-r1-small"]
    assert image.visibility == "private"
    assert image.properties["aurora_digest"] == "abc"
    raw = conn.image.get(f"/images/{image_id}").json()  # sdk maps hw_* to attributes
    assert {k: raw.get(k) for k in STFC_PROPERTIES} == STFC_PROPERTIES
    assert (glance.store_dir / image_id).stat().st_size == image.size  # really in the file store

    conn.image.update_image(image_id, aurora_live_since="2026-11-24T05:00:00Z")  # the id, not image
    again = conn.image.get_image(image_id)
    assert again.properties["aurora_live_since"] == "2026-11-24T05:00:00Z"
    assert again.properties["aurora_digest"] == "abc"
    assert [i.id for i in conn.image.images(tag="aurora-r1-small")] == [image_id]

    out = tmp_path / "down.qcow2"
    conn.image.download_image(image_id, output=str(out))
    assert out.read_bytes() == small_qcow2.read_bytes()
    conn.image.delete_image(image_id)
    assert conn.image.find_image(image_id) is None


@pytest.mark.usefixtures("clouds_yaml")
def test_glance_stop_and_start_keep_images(glance: GlanceServer, small_qcow2: Path) -> None:
    conn = _connect()
    image_id = _upload(conn, small_qcow2, "aurora-r1-restart")
    glance.stop()
    try:
        with pytest.raises(ks_exc.ConnectFailure):
            conn.image.get_image(image_id)
    finally:
        glance.start()
    assert conn.image.get_image(image_id).status == "active"
    conn.image.delete_image(image_id)


@pytest.mark.usefixtures("clouds_yaml")
def test_nova_show_and_find(nova: NovaDouble) -> None:
    conn = _connect()
    server = conn.compute.find_server(SERVER, ignore_missing=False)
    assert server.id == nova.server.id
    assert server.status == "ACTIVE"
    assert conn.image.find_image(server.image.id) is None  # nobody has promoted to it yet
    assert nova.machine is None
    shown = conn.compute.get_server(server.id)
    assert shown.addresses["private"][0]["addr"] == "127.0.0.1"
    assert len(shown.attached_volumes) == len(VOLUMES)
    assert ("GET", f"/v2.1/servers/detail?name={SERVER}") in nova.requests
    with pytest.raises(os_exc.NotFoundException):
        conn.compute.get_server(str(uuid.uuid4()))
    assert conn.compute.find_server("no-such-server") is None


@pytest.mark.usefixtures("clouds_yaml")
def test_nova_refuses_rebuild_to_missing_image_and_can_be_down(nova: NovaDouble) -> None:
    conn = _connect()
    server = conn.compute.find_server(SERVER, ignore_missing=False)
    before = len(nova.rebuilds)
    with pytest.raises(os_exc.BadRequestException, match="could not be found"):
        conn.compute.rebuild_server(server, str(uuid.uuid4()))
    assert len(nova.rebuilds) == before
    assert conn.compute.get_server(server.id).status == "ACTIVE"
    nova.down()
    try:
        with pytest.raises(ks_exc.ConnectFailure):
            conn.compute.get_server(server.id)
    finally:
        nova.up()


@pytest.mark.usefixtures("clouds_yaml")
def test_nova_rebuild_to_error_with_fault(
    nova: NovaDouble, glance: GlanceServer, small_qcow2: Path
) -> None:
    conn = _connect()
    server = conn.compute.find_server(SERVER, ignore_missing=False)
    bad_id = _upload(conn, small_qcow2, "aurora-r1-corrupt")
    stored = glance.store_dir / bad_id
    with stored.open("r+b") as f:  # bit rot in Glance's store, after Glance hashed the upload
        f.seek(stored.stat().st_size // 2)
        f.write(b"\xff" * 16)
    rebuilt = conn.compute.rebuild_server(server, bad_id)
    assert rebuilt.status == "REBUILD"
    with pytest.raises(os_exc.ResourceFailure):
        conn.compute.wait_for_server(rebuilt, status="ACTIVE", interval=0.2, wait=60)
    failed = conn.compute.get_server(server.id)
    assert failed.status == "ERROR"
    assert failed.image.id == bad_id  # Nova records the new image even when the spawn fails
    assert "failed verification" in failed.fault["message"]
    assert nova.machine is None

    nova.fail_next_rebuild("Build of instance aborted: injected by the test")
    conn.compute.rebuild_server(server, bad_id)
    with pytest.raises(os_exc.ResourceFailure):
        conn.compute.wait_for_server(failed, status="ACTIVE", interval=0.2, wait=60)
    assert conn.compute.get_server(server.id).fault["message"] == (
        "Build of instance aborted: injected by the test"
    )
    conn.image.delete_image(bad_id)


# -- one real rebuild boot --------------------------------------------------------------


def _ssh(ssh_config: Path, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(ssh_config), SERVER, "--", command],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _wait_ssh(ssh_config: Path, nova: NovaDouble, timeout: float = 600) -> None:
    def attempt() -> bool:
        console = nova.serial_log.read_bytes() if nova.serial_log else b""
        # ACTIVE only means the domain runs; a firmware with nothing to boot sits here.
        assert b"UEFI Interactive Shell" not in console, (
            f"the firmware found nothing bootable on the image's ESP (console {nova.serial_log})"
        )
        r = _ssh(ssh_config, "true", timeout=60)
        if r.returncode != 0:
            raise ConnectionError(r.stderr.strip() or f"ssh exited {r.returncode}")
        return True

    retry(attempt, timeout=timeout, interval=2, what="ssh to the rebuilt server",
          retry_on=(ConnectionError, subprocess.TimeoutExpired))  # fmt: skip


def _rebuild_and_wait(conn: openstack.connection.Connection, image_id: str) -> None:
    server = conn.compute.find_server(SERVER, ignore_missing=False)
    conn.compute.rebuild_server(server, image_id)
    conn.compute.wait_for_server(server, status="ACTIVE", interval=2, wait=900)


@pytest.mark.vm
@pytest.mark.usefixtures("clouds_yaml")
def test_real_rebuild_boots_this_runs_image_and_keeps_data(
    nova: NovaDouble, glance: GlanceServer, ssh_config: Path
) -> None:
    image_dir = boot_image_dir()
    # The release tooling's own conversion (qemu-img convert -c, cached beside the
    # image): test_release.py's promote of the same image then reuses it instead of
    # compressing the disk a second time (~30 s on 2 cores).
    was_cached = cached_qcow(image_dir) is not None
    t0 = time.monotonic()
    qcow2 = convert(image_dir).path
    convert_s = time.monotonic() - t0
    conn = _connect()
    t0 = time.monotonic()
    image_id = _upload(conn, qcow2, f"aurora-{image_dir.name}", **STFC_PROPERTIES)
    upload_s = time.monotonic() - t0
    assert conn.image.get_image(image_id).hash_value == file_digest(qcow2, "sha512")

    t0 = time.monotonic()
    _rebuild_and_wait(conn, image_id)
    active_s = time.monotonic() - t0
    assert nova.machine is not None and nova.machine.running
    argv = (nova.machine.workdir / "qemu.argv").read_text()
    assert "if=pflash" in argv and "-kernel" not in argv
    assert "-smbios" not in argv  # no SMBIOS credentials on JASMIN
    _wait_ssh(ssh_config, nova)
    ssh_s = time.monotonic() - t0
    phases = " ".join(f"{k}={v:.0f}s" for k, v in nova.timings.items())

    marker = str(uuid.uuid4())
    r = _ssh(ssh_config, f"echo {marker} > /data/r1-marker && echo x > /var/tmp/r1-root && sync")
    assert r.returncode == 0, r.stderr
    first_host_key = _ssh(ssh_config, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout

    # The second rebuild replaces the root disk: host keys may change, as on JASMIN.
    known_hosts = ssh_config.parent / "known_hosts"
    _rebuild_and_wait(conn, image_id)
    known_hosts.unlink(missing_ok=True)
    _wait_ssh(ssh_config, nova)
    assert _ssh(ssh_config, "cat /data/r1-marker").stdout.strip() == marker
    assert _ssh(ssh_config, "test -e /var/tmp/r1-root").returncode == 1  # fresh root disk
    second_host_key = _ssh(ssh_config, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout
    print(
        f"\nMEASURED glance_start={glance.startup_seconds:.1f}s "
        f"convert={convert_s:.0f}s{' (cached)' if was_cached else ''} "
        f"qcow2={qcow2.stat().st_size / 2**20:.0f}MiB "
        f"(raw {(image_dir / 'aurora.raw').stat().st_size / 2**20:.0f}MiB) "
        f"upload={upload_s:.1f}s rebuild_to_active={active_s:.0f}s "
        f"rebuild_to_ssh={ssh_s:.0f}s ({phases}) host_key_kept={first_host_key == second_host_key} "
        f"image={shlex.quote(image_dir.name)}"
    )
