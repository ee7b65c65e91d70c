"""Probe a rebuilt server: where to reach it, which host keys to trust, which manifest
its drift check compares with, and the failing units recorded before the rebuild.

Host keys are known hosts, not first use: the probe trusts only keys whose
fingerprints the server printed on its console (read through Nova).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from builder import progress
from builder.errors import AuroraError
from builder.host import health
from builder.host.probe import (
    Check,
    Endpoint,
    HostKeyError,
    ProbeReport,
    known_hosts_for,
    pin_host_keys,
    probe,
    state_dir,
)
from builder.host.remote import Remote
from builder.image.manifest import Manifest
from builder.image.store import read_manifest, resolve_image
from builder.release import meta as release_meta
from builder.release.cloud import Cloud, GlanceImage, Server
from builder.release.errors import ReleaseError
from builder.release.target import Target


def release_manifest(cloud: Cloud, image: GlanceImage, store: Path) -> Manifest | None:
    """The image's manifest for the probe's audit: the local `store`'s, else the one
    that travelled with the release in Glance (a rollback from any clone)."""
    tag = image.prop("aurora_tag")
    if not tag:
        return None
    try:
        return read_manifest(resolve_image(tag, store))
    except (AuroraError, OSError, ValueError):
        pass
    with tempfile.TemporaryDirectory(prefix="aurora-meta-") as scratch:
        try:
            return read_manifest(release_meta.fetch(cloud, image, Path(scratch)))
        except (AuroraError, OSError, ValueError):
            return None


def probe_address(target: Target, server: Server) -> str:
    """Where the probe looks: --address / deploy.address, else Nova's first IPv4."""
    address = target.address or (server.addresses[0] if server.addresses else None)
    if address is None:
        raise ReleaseError(
            f"server {server.name} has no IPv4 address in Nova; "
            "set deploy.address in the spec or pass --address"
        )
    return address


def remote_for(
    target: Target, server: Server, known_hosts: Path, checking: str = "accept-new"
) -> tuple[Remote, Endpoint]:
    address = probe_address(target, server)
    remote = Remote(
        host=address,
        user=target.ssh_user,
        port=target.ssh_port,
        identity=target.identity,
        ssh_config=target.ssh_config,
        known_hosts=known_hosts,
        host_key_checking=checking,
    )
    endpoint = Endpoint(address, target.hostname, target.http_port, target.https_port)
    return remote, endpoint


def run_probe(target: Target, server: Server, image: GlanceImage) -> ProbeReport:
    if target.prober is not None:
        return target.prober(target, server, image)
    known_hosts = known_hosts_for(target.cloud.name, server.id)
    remote, endpoint = remote_for(target, server, known_hosts, checking="yes")
    try:
        _pin_from_console(target, server, remote, known_hosts)
    except HostKeyError as exc:
        return ProbeReport(remote.name, (Check("host key", False, str(exc)),))
    manifest = release_manifest(target.cloud, image, target.store)
    with progress.step(f"probe {server.name} on {image.name}") as step:
        step.note(f"ssh {remote.name}, http {endpoint.address}:{endpoint.http_port}")
        return probe(
            remote,
            endpoint,
            manifest,
            timeout=target.probe_timeout,
            dashboard_grace=target.dashboard_grace,
            before=health.load_record(failing_record(target, server)),
        )


def _pin_from_console(target: Target, server: Server, remote: Remote, known_hosts: Path) -> None:
    """Known hosts, not first use: wait until sshd answers with a key whose fingerprint
    the server printed on its console (read through Nova), and trust only that."""
    deadline = time.monotonic() + target.probe_timeout
    with progress.step(f"host keys of {server.name} from its console") as step:
        while True:
            console = target.cloud.console_output(server.id)
            pinned = pin_host_keys(known_hosts, remote.host, remote.port or 22, console)
            if pinned:
                step.note(f"{pinned} key(s) vouched for by the console")
                return
            if time.monotonic() > deadline:
                raise HostKeyError(
                    f"no host key of {remote.host}:{remote.port} matched a fingerprint on "
                    "its console within the probe timeout: check the server before trusting it"
                )
            time.sleep(5)


def failing_record(target: Target, server: Server) -> Path:
    return health.record_path(state_dir(), target.cloud.name, server.id)


def record_failing(target: Target, server: Server) -> None:
    """Before the first rebuild of a release: what fails on the server now, and how.
    The probe excuses a pipeline unit failing the same way afterwards (builder.host.health)."""
    with progress.step(f"record failing units on {server.name}") as step:
        try:
            remote, _ = remote_for(target, server, known_hosts_for(target.cloud.name, server.id))
        except ReleaseError as exc:
            failing_record(target, server).unlink(missing_ok=True)
            step.note(f"not recorded ({exc})")
            return
        step.note(health.record_before(remote, failing_record(target, server)))
