"""Release commands of `aurora-image`: promote, rollback, releases, glance-prune, secrets.

Everything about the server comes from the spec's `deploy:` section; the
flags override it (so a test, or an operator on a jump host, needs no
special spec). Glance pruning is `glance-prune` because `prune` already
prunes the local image store.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from builder.cli import gates as cli_gates
from builder.errors import AuroraError, SpecError

if TYPE_CHECKING:
    from builder.release.cloud import Cloud
    from builder.release.history import Releases
    from builder.release.live import ImageFinder
    from builder.release.promote import ReleasePlan
    from builder.release.target import Outcome, Target
    from builder.spec.model import HostSpec


def image_finder(args: argparse.Namespace, scratch: Path) -> ImageFinder:
    """Resolves TAG / directory / `live`; the spec and the cloud are read only if needed."""
    from builder.release.live import ImageFinder

    return ImageFinder(
        scratch,
        args.paths.images,
        connect=lambda: _cloud(args, _spec(args)),
        server=lambda: args.server or _spec(args).deploy.server,
    )


def _spec(args: argparse.Namespace) -> HostSpec:
    from builder.spec.model import load_spec

    return load_spec(args.spec)


def _cloud(args: argparse.Namespace, spec: HostSpec) -> Cloud:
    """As the openstack CLI: --os-cloud, else OS_CLOUD, else the OS_* variables when
    OS_AUTH_URL is set; the spec's deploy.cloud is the default behind them all."""
    from builder.release.cloud import Cloud

    if args.cloud:
        return Cloud.connect(args.cloud)
    if os.environ.get("OS_CLOUD") or os.environ.get("OS_AUTH_URL"):
        return Cloud.connect(None)
    return Cloud.connect(spec.deploy.cloud)


def say(text: str) -> None:
    """Target.note for the CLI: what a release decided or warns about, a line on stderr
    (stdout stays clean for --json)."""
    print(text, file=sys.stderr)


def _target(args: argparse.Namespace) -> Target:
    from builder.release.target import Target
    from builder.spec.systemd_values import parse_timespan

    spec = _spec(args)
    cli_gates.apply_target(args, spec)
    deploy = spec.deploy
    span = args.probe_timeout or deploy.probe_timeout
    try:
        timeout = parse_timespan(span)
    except ValueError as exc:
        raise SpecError(f"--probe-timeout {span}: {exc}") from None
    return Target(
        cloud=_cloud(args, spec),
        server=args.server or deploy.server,
        hostname=spec.hostname,
        store=args.paths.images,
        address=args.address or deploy.address,
        ssh_user=deploy.ssh_user,
        ssh_port=args.ssh_port or deploy.ssh_port,
        http_port=args.http_port or deploy.http_port,
        https_port=args.https_port or deploy.https_port,
        identity=args.identity,
        ssh_config=args.ssh_config,
        probe_timeout=timeout,
        note=say,
    )


def _finish(args: argparse.Namespace, run: Callable[[], Outcome]) -> int:
    """Print the outcome (text or JSON) also when the release failed, then fail."""
    from builder.release.errors import ReleaseFailed, ServerBroken

    try:
        outcome = run()
    except (ReleaseFailed, ServerBroken) as exc:
        if args.json:
            print(json.dumps(exc.outcome.to_json()))
        else:
            _print_attempts(exc.outcome)
        raise
    if args.json:
        print(json.dumps(outcome.to_json()))
    else:
        _print_attempts(outcome)
        print(outcome.message)
    return 0


def _print_attempts(outcome: Outcome) -> None:
    for attempt in outcome.attempts:
        print(f"{attempt.image.name}: {attempt.outcome}: {attempt.reason}")
        for check in attempt.probe.checks if attempt.probe else ():
            print(f"  {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")


def cmd_promote(args: argparse.Namespace) -> int:
    from builder.release.promote import plan_promote

    target = _target(args)
    if args.dry_run:
        return _print_plan(args, target, plan_promote(target, args.tag))
    # Signature, policy, approvals, lease first; the plan is made under the lease.
    return _finish(args, lambda: cli_gates.promote(args, target))


def cmd_rollback(args: argparse.Namespace) -> int:
    from builder.release.promote import plan_rollback

    target = _target(args)
    if args.dry_run:
        return _print_plan(args, target, plan_rollback(target, args.tag))
    return _finish(args, lambda: cli_gates.rollback(args, target))


def _print_plan(args: argparse.Namespace, target: Target, plan: ReleasePlan) -> int:
    """--dry-run: the plan, computed by reading only; nothing was changed."""
    from builder.release.preview import preview

    shown = preview(target, plan)
    if args.json:
        print(json.dumps(shown.to_json()))
    else:
        sys.stdout.write(shown.format_text())
    return 0


def cmd_releases(args: argparse.Namespace) -> int:
    from builder.release.history import releases

    spec = _spec(args)
    cli_gates.apply_target(args, spec)
    result = releases(_cloud(args, spec), args.server or spec.deploy.server, args.paths.images)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        sys.stdout.write(format_releases(result))
    return 0


def format_releases(result: Releases) -> str:
    s = result.server
    lines = [f"server {s.name} ({s.id}) is {s.status} on {result.server_image}"]
    if result.lease:
        lines.append(f"leased by {result.lease}")
    rows = [r.to_json() for r in result.releases]
    width = max((len(r["tag"]) for r in rows), default=3)
    lines.append(f"{'TAG':<{width}}  {'LIVE':<9}  {'GLANCE':<11}  {'PROMOTED':<36}  LAST  ATTESTED")
    for r in rows:
        live = "live" if r["live"] else ("last-good" if r["last_good"] else "")
        promoted = f"{r['promoted_at']} {r['promoted_by']}" if r["promoted_at"] else "-"
        last = r["last"]
        last_text = f"{last['action']} {last['outcome']} {last['at']}" if last["action"] else "-"
        if r["attested"] is None:
            attested = "not local" + (" (passed when uploaded)" if r["glance_attestation"] else "")
        else:
            attested = "yes" if r["attested"] else "no"
        lines.append(
            f"{r['tag']:<{width}}  {live:<9}  {r['glance']:<11}  {promoted:<36}  "
            f"{last_text}  {attested}"
        )
    return "\n".join(lines) + "\n"


def cmd_glance_prune(args: argparse.Namespace) -> int:
    from builder.release.prune import glance_prune

    spec = _spec(args)
    cli_gates.apply_target(args, spec)
    keep = spec.deploy.keep_images if args.keep is None else args.keep
    cloud = _cloud(args, spec)
    server = args.server or spec.deploy.server
    result = glance_prune(
        cloud, server, keep, dry_run=args.dry_run,
        others=[cloud.server(name) for name in cli_gates.other_servers(spec, cloud.name, server)],
    )  # fmt: skip
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    if result.plan is not None:
        sys.stdout.write(result.plan.format_text())
        return 0
    for name in result.removed:
        print(f"deleted {name}")
    for name, why in result.protected.items():
        print(f"kept {name}: {why}")
    print(f"{len(result.kept)} aurora image(s) left in Glance")
    return 0


def _split_host(text: str) -> tuple[str | None, str]:
    user, _, host = text.rpartition("@")
    if not host:
        raise AuroraError(f"HOST {text!r}: give [user@]host")
    return user or None, host


def cmd_secrets(args: argparse.Namespace) -> int:
    from builder.host.remote import Remote
    from builder.spec.credcheck import check, format_table

    spec = _spec(args)
    user, host = _split_host(args.host)
    remote = Remote(
        host=host,
        user=user or spec.deploy.ssh_user,
        port=args.ssh_port or spec.deploy.ssh_port,
        identity=args.identity,
        ssh_config=args.ssh_config,
    )
    report = check(remote, spec.secrets)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        sys.stdout.write(format_table(report))
    if not report.ok:
        print(f"aurora-image: {report.summary()}", file=sys.stderr)
        return 1
    return 0
