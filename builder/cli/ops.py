"""Operator commands of `aurora-image`: interactive VM, ssh, audit, explain."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from builder.cli import release as cli_release
from builder.errors import AuroraError

if TYPE_CHECKING:
    from builder.host.audit import Runner
    from builder.vm.session import VmState


# --------------------------------------------------------------------------
# vm / ssh
# --------------------------------------------------------------------------


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _volume_labels(image_dir: Path, fallback: Path) -> list[str]:
    """The labels the image mounts its volumes by, from the spec it was built from."""
    from builder.errors import StoreError
    from builder.image.inputs import REPO
    from builder.image.store import read_manifest
    from builder.spec.model import load_spec
    from builder.vm.disks import volume_labels

    try:
        recorded = read_manifest(image_dir).spec
    except StoreError:
        recorded = None
    path = REPO / recorded if recorded and (REPO / recorded).is_file() else fallback
    return volume_labels(load_spec(path))


def cmd_vm(args: argparse.Namespace) -> int:
    from builder import progress
    from builder.vm import session as vm_session

    vms = vm_session.vms_dir(args.paths.cache)
    if args.console:
        return _console(args)
    if args.stop:
        state = vm_session.find(vms, args.tag)
        clean = vm_session.stop(vms, state)
        if args.json:
            print(json.dumps({"tag": state.tag, "stopped": True, "forced": not clean}))
        else:
            print(f"{state.tag}: powered off" + ("" if clean else " (forced)"))
        return 0
    if not args.keep and not _interactive():
        raise vm_session.VmError(
            "`aurora-image vm` opens a shell and needs a terminal; "
            "add --keep to boot it and run commands with `aurora-image ssh TAG -- CMD`"
        )
    image_dir = _image(args.tag, args.paths.images)
    labels = _volume_labels(image_dir, args.spec)
    with progress.step(f"booting {image_dir.name}") as step:
        state = vm_session.start(vms, image_dir, labels, note=step)
    if args.json and not _interactive():
        print(json.dumps(state.to_json()))
        return 0
    print(_where(state))
    if not _interactive():
        return 0
    if args.keep:
        rc = state.remote().interactive()
        print(
            f"{state.tag}: still running; `aurora-image ssh {state.tag}` to return, "
            f"`aurora-image vm --stop {state.tag}` to power it off"
        )
        return rc
    # A closed terminal must not leave the VM behind: SIGHUP unwinds to the stop.
    signal.signal(signal.SIGHUP, lambda signum, frame: sys.exit(128 + signum))
    try:
        rc = state.remote().interactive()
    finally:
        clean = vm_session.stop(vms, state)
        print(f"{state.tag}: powered off" + ("" if clean else " (forced)"))
    return rc


def _console(args: argparse.Namespace) -> int:
    """`vm --console`: the kept VM's serial console, or a fresh VM's from its first line."""
    from builder import progress
    from builder.vm import console
    from builder.vm import session as vm_session

    vms = vm_session.vms_dir(args.paths.cache)
    if args.tag:
        state = vm_session.read_state(vms, Path(args.tag).name)
    else:
        state = vm_session.find(vms, None) if vm_session.running(vms) else None
    booted = state is None
    if state is None:
        image_dir = _image(args.tag, args.paths.images)
        labels = _volume_labels(image_dir, args.spec)
        with progress.step(f"starting {image_dir.name}"):
            state = vm_session.start(vms, image_dir, labels, wait_ssh=False)
    if not state.console:
        raise vm_session.VmError(
            f"the VM of {state.tag} has no console socket (kept by an older aurora-image); "
            f"`aurora-image vm --stop {state.tag}` and start it again"
        )
    stops = booted and not args.keep
    banner = f"{state.tag}: serial console, Ctrl-] to leave" + (
        " (the VM powers off then)\n" if stops else " (the VM keeps running)\n"
    )
    if stops:  # a closed terminal must not leave the VM behind
        signal.signal(signal.SIGHUP, lambda signum, frame: sys.exit(128 + signum))
    try:
        ended = console.attach(Path(state.console), banner=banner)
    finally:
        if stops:
            clean = vm_session.stop(vms, state)
            print(f"\n{state.tag}: powered off" + ("" if clean else " (forced)"))
    if not stops:
        print(f"\n{state.tag}: {ended}; still running (`aurora-image vm --stop {state.tag}`)")
    return 0


def _where(state: VmState) -> str:
    ports = state.ports
    return (
        f"{state.tag}: running (pid {state.pid}), ssh ready after "
        f"{state.ssh_ready_after or 0:.0f} s\n"
        f"serial log: {state.serial_log}\n"
        f"ssh: aurora-image ssh {state.tag}  (port {ports['ssh']}, key {state.key})\n"
        f"console: aurora-image vm --console {state.tag}\n"
        f"http: http://127.0.0.1:{ports.get('http')}/"
    )


def _image(tag: str | None, store: Path) -> Path:
    from builder.image.store import newest_image, resolve_image

    return resolve_image(tag, store) if tag else newest_image(store)


def _looks_like_tag(word: str) -> bool:
    """An image tag (release, dash, 12 hex digits) or an image directory."""
    return bool(re.fullmatch(r"[0-9][0-9A-Za-z.]*-[0-9a-f]{12}", word)) or "/" in word


def cmd_ssh(args: argparse.Namespace) -> int:
    from builder.vm import session as vm_session

    tag, command = args.tag, list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    vms = vm_session.vms_dir(args.paths.cache)
    if tag and vm_session.read_state(vms, tag) is None and not _looks_like_tag(tag):
        # `ssh -- CMD` with no tag: argparse hands CMD's first word over as the tag.
        tag, command = None, [tag, *command]
    state = vm_session.find(vms, tag)
    remote = state.remote()
    line = " ".join(command) or None
    if args.json:
        if line is None:
            raise vm_session.VmError(
                "ssh --json needs a command: aurora-image ssh --json TAG -- CMD"
            )
        rc, out = remote.execute(line, timeout=600)
        print(json.dumps({"tag": state.tag, "command": line, "rc": rc, "stdout": out}))
        return rc
    if line is None or _interactive():
        return remote.interactive(line)
    return subprocess.call(remote.argv(line), stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------
# audit
# --------------------------------------------------------------------------


def _audit_remote(args: argparse.Namespace) -> Runner:
    from builder.host.remote import Remote
    from builder.spec.model import load_spec
    from builder.vm import session as vm_session

    host = args.host
    if host == "vm" or host.startswith("vm:"):
        vms = vm_session.vms_dir(args.paths.cache)
        return vm_session.find(vms, host.partition(":")[2] or None).remote()
    user, _, name = host.rpartition("@")
    deploy = load_spec(args.spec).deploy
    return Remote(
        host=name,
        user=user or deploy.ssh_user,
        port=args.ssh_port or deploy.ssh_port,
        identity=args.identity,
        ssh_config=args.ssh_config,
    )


def cmd_audit(args: argparse.Namespace) -> int:
    import tempfile

    from builder import progress
    from builder.host import audit
    from builder.image.store import read_manifest

    remote = _audit_remote(args)
    tag = args.image
    if tag is None:
        tag = audit.identify(remote)
        if tag is None:
            raise audit.AuditError(
                f"{remote.name} does not say which image it runs (no IMAGE_VERSION in "
                "/etc/os-release: built before images carried their tag); pass --image TAG"
            )
    # The manifest: from the local store, else the one that travelled with the
    # release to Glance, so any clone with cloud access can audit.
    with tempfile.TemporaryDirectory(prefix="aurora-audit-") as scratch:
        try:
            found = cli_release.image_finder(args, Path(scratch)).resolve(tag)
        except AuroraError as exc:
            raise audit.AuditError(
                f"{remote.name} runs {tag}, whose manifest neither this store nor Glance "
                f"gives ({exc}); pass --image or --os-cloud"
            ) from None
        manifest = read_manifest(found.path)
    # Live progress on a terminal only: in a pipe an error stays the one line it is.
    label = f"auditing {remote.name} against {found.tag} ({found.origin})"
    with progress.step(label) if progress.enabled() else contextlib.nullcontext():
        report = audit.audit(remote, manifest)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        sys.stdout.write(audit.format_table(report, everything=args.all))
    return 0 if report.ok else 1


# --------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    from builder.render.engine import render
    from builder.render.explain import explain, format_text
    from builder.spec.model import load_spec

    spec = load_spec(args.spec)
    result = explain(spec, render(spec), args.unit)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        sys.stdout.write(format_text(result))
    return 0
