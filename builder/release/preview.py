"""`--dry-run` of promote and rollback: the plan as every write to Glance and Nova,
in order, with the exact name, size and properties of an upload. Reads only."""

from __future__ import annotations

from builder.image.store import DISK, human_size
from builder.plan import Plan, Step
from builder.release import meta as release_meta
from builder.release.convert import QCOW, cached_qcow, image_properties, measure_qcow
from builder.release.glance import MARK, READY, STATE, UPLOADING
from builder.release.promote import ReleasePlan
from builder.release.target import Target
from builder.release.upload import UploadPlan


def preview(target: Target, plan: ReleasePlan) -> Plan:
    """The plan as `--dry-run` prints it: every write to Glance and Nova, in order,
    with the exact name, size and properties of an upload. Reads only; a conversion
    needed to know the size goes to a temporary directory."""
    server = plan.server
    steps: list[Step] = []
    if plan.upload is not None:
        steps += _upload_steps(plan.upload)
    image_id = plan.image.id if plan.image else None
    if plan.rebuild:
        steps.append(
            Step(
                "record",
                plan.image_name,
                f"history in its Glance properties: {plan.action} rebuilding, then the outcome",
                {"image_id": image_id},
            )
        )
        steps.append(
            Step(
                "rebuild",
                f"server {server.name} ({server.id}, {server.status})",
                f"from {plan.current} to {plan.image_name} ({plan.reason}); root disk "
                "replaced, volumes and addresses kept",
                {
                    "server": server.name,
                    "server_id": server.id,
                    "server_status": server.status,
                    "from_image": plan.current,
                    "from_image_id": server.image_id,
                    "to_image": plan.image_name,
                    "to_image_id": image_id,
                },
            )
        )
    else:
        steps.append(
            Step(
                "record",
                plan.image_name,
                f"{server.name} already runs it: not rebuilt; the probe's outcome goes "
                "into its Glance history",
                {"image_id": image_id},
            )
        )
    port = "" if target.ssh_port == 22 else f":{target.ssh_port}"
    steps.append(
        Step(
            "probe",
            f"{target.ssh_user}@{plan.address}{port}",
            f"ssh, boot finished, no failed units, dashboard on http :{target.http_port} "
            f"(https :{target.https_port}), no drift; within {target.probe_timeout:.0f} s",
            {
                "address": plan.address,
                "ssh_port": target.ssh_port,
                "http_port": target.http_port,
                "https_port": target.https_port,
                "timeout_seconds": target.probe_timeout,
            },
        )
    )
    if plan.rebuild:
        if plan.fallback is not None and plan.fallback.id != image_id:
            steps.append(
                Step(
                    "on-failure",
                    f"rebuild {server.name} from {plan.fallback.name}",
                    "automatic rollback to what it runs now, then probe that",
                    {"image": plan.fallback.name, "image_id": plan.fallback.id},
                )
            )
        else:
            steps.append(
                Step(
                    "on-failure",
                    "no automatic rollback",
                    f"{server.name} runs no image to go back to ({server.status} on "
                    f"{plan.current})",
                )
            )
    verb = "is rebuilt" if plan.rebuild else "stays"
    return Plan(
        command=f"{plan.action} {plan.tag}",
        target=f"server {server.name} on cloud {plan.cloud}",
        steps=tuple(steps),
        summary=f"then {server.name} {verb} on {plan.image_name} (now on {plan.current})",
    )


def _upload_steps(upload: UploadPlan) -> list[Step]:
    image_dir, tag = upload.image_dir, upload.image_dir.name
    steps = [
        Step(
            "delete",
            f"{i.name} ({i.id})",
            f"unfinished upload ({i.status}), never used",
            {"image_id": i.id, "status": i.status},
        )
        for i in upload.delete
    ]
    steps += [
        Step(
            "delete",
            f"{m.name} ({m.id})",
            "release metadata no ready upload names",
            {"image_id": m.id},
        )
        for m in upload.stale_meta
    ]
    meta = release_meta.describe(image_dir)
    meta_step = Step(
        "upload",
        str(meta["name"]),
        f"release metadata ({', '.join(meta['files'])}), {meta['size']} bytes, "  # type: ignore[arg-type]
        f"private and hidden, tags {release_meta.META_MARK} {tag}",
        {"name": meta["name"], "size": meta["size"], "files": meta["files"], "hidden": True},
    )
    if upload.reuse is not None:
        steps.append(
            Step(
                "reuse",
                f"{upload.reuse.name} ({upload.reuse.id})",
                "ready in Glance with this disk's digest: not converted or uploaded again",
                {"image_id": upload.reuse.id, "size": upload.reuse.size},
            )
        )
        return [*steps, meta_step] if upload.attach_meta else steps
    cached = cached_qcow(image_dir)
    if cached is None:
        steps.append(
            Step(
                "convert",
                str(image_dir / DISK),
                f"to compressed qcow2 {image_dir / QCOW} (kept as the cache)",
            )
        )
    size = cached.size if cached else measure_qcow(image_dir)
    properties = {**image_properties(image_dir), STATE: UPLOADING}
    steps.append(
        Step(
            "upload",
            upload.name,
            f"qcow2, {human_size(size)} ({size} bytes), private, tags {MARK} {tag}; "
            f"{STATE} becomes {READY} once Glance's size and hash match",
            {
                "name": upload.name,
                "size": size,
                "disk_format": "qcow2",
                "visibility": "private",
                "tags": [MARK, tag],
                "properties": properties,
            },
            tuple(f"{k}={v}" for k, v in sorted(properties.items())),
        )
    )
    return [*steps, meta_step]
