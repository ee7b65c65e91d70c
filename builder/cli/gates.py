"""The release gates' side of the CLI: `--target`, `--break-lease`, `--allowed-signers`,
`--force --reason`, `--approve`, turned into a builder.release.gates.Gates from the spec.

The options are declared with every other in builder.cli.commands (`GATES`);
kept apart from cli_release so a release command gains the gates with one
hook, `guarded(...)` around the run. `sign` lives here too.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from builder.errors import SpecError

if TYPE_CHECKING:
    from builder.release.cloud import Cloud
    from builder.release.gates import Gates
    from builder.release.target import Outcome, Target
    from builder.spec.model import DeployTarget, HostSpec


def categories() -> tuple[str, ...]:
    from builder.spec.model import ChangeCategory

    return get_args(ChangeCategory)


def _force(args: argparse.Namespace) -> tuple[bool, str | None]:
    force, reason = getattr(args, "force", False), getattr(args, "reason", None)
    if force and not (reason or "").strip():
        raise SpecError('--force needs --reason "why" (the override is recorded)')
    if reason and not force:
        raise SpecError("--reason goes with --force")
    return force, reason


def apply_target(args: argparse.Namespace, spec: HostSpec) -> DeployTarget | None:
    """Fill --server/--cloud/--address from `--target NAME` where not given (and refuse
    a bad flag combination before anything is contacted)."""
    _force(args)
    name = getattr(args, "target", None)
    if not name:
        return None
    targets = spec.deploy.targets
    if name not in targets:
        known = ", ".join(sorted(targets)) or "none"
        raise SpecError(
            f"{args.spec}: deploy.targets has no {name!r} (targets: {known}); "
            "add it there or pick one of those"
        )
    chosen = targets[name]
    if not getattr(args, "server", None):
        args.server = chosen.server
    if getattr(args, "cloud", None) is None and chosen.cloud:
        args.cloud = chosen.cloud
    if hasattr(args, "address") and not args.address and chosen.address:
        args.address = chosen.address
    return chosen


def other_servers(spec: HostSpec, cloud: str, server: str) -> list[str]:
    """The other deploy targets' servers in this cloud, when `server` is one of the
    targets: their live and rollback images are as protected from glance-prune as
    this server's. (A server outside deploy.targets is pruned for on its own.)"""
    if server not in {t.server for t in spec.deploy.targets.values()}:
        return []
    return sorted(
        {t.server for t in spec.deploy.targets.values()
         if t.cloud in (None, cloud) and t.server != server}
    )  # fmt: skip


def gates_for(
    args: argparse.Namespace, spec: HostSpec, chosen: DeployTarget | None, cloud: Cloud
) -> Gates:
    from builder.release.cloud import Cloud
    from builder.release.gates import Gates
    from builder.release.policy import StagingServer
    from builder.spec.systemd_values import parse_timespan

    deploy = spec.deploy
    target_spec = spec.source.targets.get(args.target) if chosen else None
    force, reason = _force(args)
    allowed = args.allowed_signers or spec.source.allowed_signers
    role = chosen.role if chosen else None
    stagings: list[StagingServer] = []
    others: list[StagingServer] = []
    # The other targets matter only to a release that goes to one of them.
    for name, t in deploy.targets.items() if chosen is not None else ():
        if t == chosen:
            continue
        same = t.cloud in (None, cloud.name)
        where = cloud if same else Cloud.connect(t.cloud) if t.role == "staging" else None
        if where is None:
            continue
        entry = StagingServer(name, where, t.server)
        if t.role == "staging" and role == "production":
            stagings.append(entry)
        if same:
            others.append(entry)
    needs = tuple(deploy.approval_required)
    span = getattr(args, "soak", None) or deploy.soak_window
    try:
        soak = 0.0 if span in ("0", "0s") else parse_timespan(span)
    except ValueError as exc:
        raise SpecError(f"--soak {span}: {exc}") from None
    return Gates(
        role=role,
        allowed_signers=allowed,
        lease_ttl=parse_timespan(deploy.lease_ttl),
        break_lease=args.break_lease,
        stagings=stagings,
        staging_soak=parse_timespan(deploy.staging_soak),
        force_reason=reason if force else None,
        approvals=tuple(getattr(args, "approve", ()) or ()),
        needs_approval=needs,
        target_spec=target_spec,
        others=others,
        soak_window=soak,
        soak_interval=min(60.0, max(soak / 10, 1.0)),
        fingerprint=fingerprinter(target_spec or spec.source.path),
    )


def fingerprinter(spec_path: Path) -> Callable[[Path], dict[str, str]]:
    """image dir -> its change-category fingerprints, read from the spec that built it
    (checked: the spec must give the image's tag now; otherwise none are known)."""

    def fingerprint(image_dir: Path) -> dict[str, str]:
        from builder.image.inputs import collect
        from builder.image.store import read_manifest
        from builder.release.categories import fingerprints
        from builder.spec.model import load_spec

        spec = load_spec(spec_path)
        if collect(spec).tag != image_dir.name:
            return {}
        return fingerprints(spec, read_manifest(image_dir))

    return fingerprint


def _with_evidence(target: Target) -> Target:
    from dataclasses import replace

    from builder.release.gates import keep_evidence

    return replace(target, before_rollback=target.before_rollback or keep_evidence)


def _prepared(args: argparse.Namespace, target: Target) -> tuple[Target, Gates]:
    from builder.spec.model import load_spec

    spec = load_spec(args.spec)
    chosen = spec.deploy.targets.get(args.target) if args.target else None
    target = _with_evidence(target)
    return target, gates_for(args, spec, chosen, target.cloud)


def promote(args: argparse.Namespace, target: Target) -> Outcome:
    """`promote` through the gates: signature, policy, approvals, lease; the plan is made
    under the lease, executed, soaked (builder.release.gates.guarded_promote)."""
    from builder.release.gates import guarded_promote
    from builder.release.promote import execute, plan_promote

    target, rules = _prepared(args, target)
    run = lambda: execute(target, plan_promote(target, args.tag))  # noqa: E731
    return guarded_promote(target, args.tag, rules, run)


def rollback(args: argparse.Namespace, target: Target) -> Outcome:
    """`rollback` through the gates: the image's signature, evidence, the lease."""
    from builder.release.gates import guarded_rollback
    from builder.release.promote import execute, plan_rollback

    target, rules = _prepared(args, target)
    run = lambda: execute(target, plan_rollback(target, args.tag))  # noqa: E731
    return guarded_rollback(target, args.tag, rules, run)


def cmd_sign(args: argparse.Namespace) -> int:
    from builder.release import signing
    from builder.release.convert import check_attested

    image_dir = check_attested(args.tag, args.paths.images)
    statement = signing.sign(image_dir, signing.signing_key(args.key))
    if args.json:
        print(json.dumps({"tag": image_dir.name, "statement": statement,
                          "signature": str(image_dir / signing.SIGNATURE)}))  # fmt: skip
    else:
        print(f"{image_dir.name}: signed ({image_dir / signing.SIGNATURE})")
    return 0
