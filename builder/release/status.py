"""What is live where, in one look: `aurora-image status` (like `bootc status`).

Per server: the tag it runs, the Glance image, Nova's state, whether that
image is attested; then this machine: the newest local image and the VMs
kept running here. Read-only; a server that cannot be asked says why in its
own entry, so the rest of the answer still comes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.errors import AuroraError

if TYPE_CHECKING:
    from builder.image.store import ImageRecord
    from builder.release.cloud import Cloud
    from builder.vm.session import VmState


@dataclass(frozen=True)
class ServerStatus:
    """One server as Nova and Glance see it now."""

    server: str
    target: str | None = None  # the deploy.targets entry it is, if any
    cloud: str | None = None
    id: str | None = None
    state: str | None = None  # Nova status (task state in brackets while one runs)
    tag: str | None = None  # None: not an image this tool made (or unknown)
    image: str | None = None  # Glance image name, or its id when not ours
    image_id: str | None = None
    attested: bool | None = None  # None: not in the local store, no verdict here
    attestation: str = ""  # how the verdict is known
    promoted: str = ""  # when and by whom the live image was promoted
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LocalImage:
    tag: str
    built: str
    attested: bool
    live_on: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LocalVm:
    tag: str
    pid: int
    ssh_port: int
    serial_log: str
    console: str | None


@dataclass(frozen=True)
class Status:
    servers: list[ServerStatus]
    store: str
    newest: LocalImage | None
    vms: list[LocalVm]

    @property
    def ok(self) -> bool:
        return all(s.error is None for s in self.servers)

    def to_json(self) -> dict[str, Any]:
        return {
            "servers": [s.to_json() for s in self.servers],
            "store": self.store,
            "newest": asdict(self.newest) if self.newest else None,
            "vms": [asdict(v) for v in self.vms],
        }


def server_status(
    connect: Callable[[], Cloud], name: str, target: str | None = None, *, store: Path
) -> ServerStatus:
    """Ask Nova and Glance about ``name`` (and `store` whether its images are attested
    here); a failure becomes the entry's error."""
    from builder.release.history import releases

    try:
        cloud = connect()
        result = releases(cloud, name, store)
    except AuroraError as exc:
        return ServerStatus(server=name, target=target, error=str(exc))
    server = result.server
    state = server.status + (f" ({server.task_state})" if server.task_state else "")
    live = next((r for r in result.releases if r.live), None)
    if live is None:
        return ServerStatus(
            server=server.name, target=target, cloud=cloud.name, id=server.id, state=state,
            image=result.server_image, image_id=server.image_id,
        )  # fmt: skip
    row = live.to_json()
    if live.attested is not None:
        how = (
            "smoke suite passed on this disk (local store)"
            if live.attested
            else ("not attested in the local store")
        )
    elif row["glance_attestation"]:
        how = "passed when uploaded (Glance record; not in the local store)"
    else:
        how = "unknown: not in the local store, no record in Glance"
    promoted = " ".join(x for x in (row["promoted_at"], row["promoted_by"]) if x)
    return ServerStatus(
        server=server.name,
        target=target,
        cloud=cloud.name,
        id=server.id,
        state=state,
        tag=live.tag,
        image=result.server_image,
        image_id=server.image_id,
        attested=live.attested
        if live.attested is not None
        else (True if row["glance_attestation"] else None),
        attestation=how,
        promoted=promoted,
    )


def local_status(
    images: list[ImageRecord], vms: list[VmState], servers: list[ServerStatus]
) -> tuple[LocalImage | None, list[LocalVm]]:
    newest = None
    if images:
        first = images[0]
        newest = LocalImage(
            tag=first.tag,
            built=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first.built_at)),
            attested=first.attested,
            live_on=[s.server for s in servers if s.tag == first.tag],
        )
    kept = [
        LocalVm(
            tag=v.tag,
            pid=v.pid,
            ssh_port=v.ports["ssh"],
            serial_log=v.serial_log,
            console=getattr(v, "console", None),
        )
        for v in vms
    ]
    return newest, kept


def _yes_no(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "unknown"}[value]


def format_text(status: Status) -> str:
    lines: list[str] = []
    for s in status.servers:
        name = f"server {s.server}" + (f" [{s.target}]" if s.target else "")
        if s.error:
            lines += [f"{name}: cannot be read: {s.error}", ""]
            continue
        lines.append(f"{name} (cloud {s.cloud}, id {s.id})")
        lines.append(f"  state:     {s.state}")
        if s.tag:
            lines.append(f"  live:      {s.tag}  (Glance {s.image}, {s.image_id})")
            lines.append(f"  attested:  {_yes_no(s.attested)}: {s.attestation}")
            if s.promoted:
                lines.append(f"  promoted:  {s.promoted}")
        else:
            lines.append(f"  live:      {s.image} (not an aurora image)")
        lines.append("")
    lines.append(f"local store {status.store}")
    newest = status.newest
    if newest is None:
        lines.append("  newest:    (no image built here)")
    else:
        where = f"live on {', '.join(newest.live_on)}" if newest.live_on else "not live anywhere"
        lines.append(f"  newest:    {newest.tag}  built {newest.built}, attested "
                     f"{_yes_no(newest.attested)}, {where}")  # fmt: skip
    if not status.vms:
        lines.append("  VMs:       none kept running")
    for vm in status.vms:
        lines.append(
            f"  VM:        {vm.tag}  pid {vm.pid}, ssh port {vm.ssh_port} "
            f"(`aurora-image ssh {vm.tag}`, `aurora-image vm --console {vm.tag}`)"
        )
    return "\n".join(lines) + "\n"
