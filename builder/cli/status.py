"""Looking at what runs: `aurora-image status` and `aurora-image logs TAG`.

Both only read: Nova and Glance (status), the image store, the kept VMs'
state and the logs beside each image.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from builder.errors import AuroraError

if TYPE_CHECKING:
    from builder.release.cloud import Cloud
    from builder.spec.model import HostSpec


def cmd_status(args: argparse.Namespace) -> int:
    from builder.image.store import list_images
    from builder.release import status
    from builder.spec.model import load_spec
    from builder.vm import session as vm_session

    servers: list[status.ServerStatus] = []
    if not args.local:
        spec = load_spec(args.spec)
        for target, name, cloud in _servers(args, spec):
            servers.append(
                status.server_status(
                    _connect(args, spec, cloud), name, target, store=args.paths.images
                )
            )
    store = args.paths.images
    kept = vm_session.running(vm_session.vms_dir(args.paths.cache))
    newest, vms = status.local_status(list_images(store), kept, servers)
    result = status.Status(servers, str(store), newest, vms)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        sys.stdout.write(status.format_text(result))
    return 0 if result.ok else 1


def _servers(args: argparse.Namespace, spec: HostSpec) -> list[tuple[str | None, str, str | None]]:
    """(target, server, its cloud) to ask: --server, else every deploy target, else
    deploy.server."""
    if args.server:
        return [(None, name, None) for name in args.server]
    targets = spec.deploy.targets
    if targets:
        return [(name, t.server, t.cloud) for name, t in targets.items()]
    return [(None, spec.deploy.server, None)]


def _connect(args: argparse.Namespace, spec: HostSpec, cloud: str | None) -> Callable[[], Cloud]:
    """--os-cloud, else the target's own cloud, else as every release command chooses."""
    from builder.cli.release import _cloud
    from builder.release.cloud import Cloud

    chosen = args.cloud or cloud
    return (lambda: Cloud.connect(chosen)) if chosen else (lambda: _cloud(args, spec))


def cmd_logs(args: argparse.Namespace) -> int:
    from builder.image.logs import image_logs, read_log
    from builder.image.store import newest_image, resolve_image
    from builder.vm.session import vms_dir

    store = args.paths.images
    image_dir = resolve_image(args.tag, store) if args.tag else newest_image(store)
    vms = vms_dir(args.paths.cache)
    logs = [log for log in image_logs(image_dir, vms) if args.only in (None, log.kind)]
    if args.json:
        entries = []
        for log in logs:
            entry = log.to_json()
            entry["text"] = read_log(log.path, args.tail) if log.exists else None
            entries.append(entry)
        print(json.dumps({"tag": image_dir.name, "logs": entries}))
        return 0
    for log in logs:
        if not log.exists:
            print(f"==> {log.what}: none yet ({log.path}) <==")
            continue
        print(f"==> {log.what}: {log.path} <==")
        text = read_log(log.path, args.tail)
        sys.stdout.write(text + ("\n" if text and not text.endswith("\n") else ""))
    if not any(log.exists for log in logs):
        raise AuroraError(
            f"{image_dir.name} has no logs yet in {image_dir} (build.log comes with "
            f"`make image`, smoke.log with `make smoke TAG={image_dir.name}`)"
        )
    return 0
