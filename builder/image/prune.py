"""`aurora-image prune`: which stored images may go, and removing them.

Pruning keeps the newest images, every live image and the attested image
before each live one, which is where a rollback would go. Partial builds
nobody has touched for an hour go too, and so do the leftovers of an
interrupted removal. The store's layout (what is an image, a partial build, a
half-removed one) is builder.image.store's.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import StoreError, UnknownTag
from builder.image.store import (
    allocated_bytes,
    human_size,
    image_dirs,
    is_attested,
    partial_dirs,
    removing_dir,
    removing_dirs,
)
from builder.plan import Plan, Step

# A build streams mkosi's output into its partial dir's build.log, so a
# partial untouched for this long has no build behind it any more.
STALE_PARTIAL_SECONDS = 3600.0


def _newest_mtime(path: Path) -> float:
    newest = path.stat().st_mtime
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def _remove(path: Path) -> None:
    """Rename out of sight first, so an interrupted removal never looks like an image."""
    doomed = removing_dir(path)
    shutil.rmtree(doomed, ignore_errors=True)
    path.rename(doomed)
    shutil.rmtree(doomed)


@dataclass(frozen=True)
class PrunePlan:
    """What `prune` removes and why, and what it keeps because it must."""

    store: Path
    images: tuple[Path, ...]  # older than the newest `keep`, not protected
    partials: tuple[Path, ...]  # partial builds no build has touched for a while
    leftovers: tuple[Path, ...]  # half-removed images of an interrupted prune
    protected: dict[str, str]  # tag -> why it stays although older than `keep`
    kept: tuple[str, ...]

    def to_json(self, keep: int) -> dict[str, Any]:
        """The plan for --dry-run --json, with the same keys a real prune reports."""
        removed = [p.name for p in (*self.images, *self.partials)]
        return {
            **self.to_plan(keep).to_json(),
            "store": str(self.store),
            "removed": removed,
            "kept": list(self.kept),
        }

    def to_plan(self, keep: int) -> Plan:
        steps = [
            Step(
                "remove",
                path.name,
                f"not among the {keep} newest; {human_size(allocated_bytes(path))}",
                {"path": str(path), "bytes": allocated_bytes(path)},
            )
            for path in self.images
        ]
        steps += [
            Step("remove", p.name, "partial build untouched for an hour", {"path": str(p)})
            for p in self.partials
        ]
        steps += [
            Step("remove", p.name, "left by an interrupted removal", {"path": str(p)})
            for p in self.leftovers
        ]
        steps += [Step("keep", tag, why) for tag, why in self.protected.items()]
        n = len(self.kept)
        return Plan(
            command=f"prune --keep {keep}",
            target=f"the image store {self.store}",
            steps=tuple(steps),
            summary=f"then {n} image{' is' if n == 1 else 's are'} left",
        )


def plan_prune(
    keep: int,
    live: Collection[str] = frozenset(),
    *,
    store: Path,
    stale_after: float = STALE_PARTIAL_SECONDS,
) -> PrunePlan:
    """Which images go: those older than the `keep` newest. Reads only.

    Never removed: a live image, and the newest attested image older than
    each live one (its rollback target). Partial builds untouched for
    `stale_after` seconds and leftovers of interrupted removals go too.
    """
    if keep < 0:
        raise StoreError(f"--keep {keep}: keep must be 0 or more")
    root = store
    dirs = image_dirs(root)
    tags = [d.name for d in dirs]
    unknown = sorted(set(live) - set(tags))
    if unknown:
        held = ", ".join(tags) or "no images"
        raise UnknownTag(
            f"live image {', '.join(unknown)} is not in {root} (it holds {held}); "
            "refusing to prune without knowing what is live"
        )
    protected = {tag: "live (--live)" for tag in live}
    for index, path in enumerate(dirs):
        if path.name in live:
            target = next((d for d in dirs[index + 1 :] if is_attested(d)), None)
            if target is not None:
                protected.setdefault(target.name, f"rollback target of live {path.name}")
    doomed = tuple(p for p in dirs[keep:] if p.name not in protected)
    now = time.time()
    partials = tuple(p for p in partial_dirs(root) if now - _newest_mtime(p) > stale_after)
    return PrunePlan(
        store=root,
        images=doomed,
        partials=partials,
        leftovers=tuple(removing_dirs(root)),
        protected={t: w for t, w in protected.items() if t in {d.name for d in dirs[keep:]}},
        kept=tuple(d.name for d in dirs if d not in doomed),
    )


def prune(
    keep: int,
    live: Collection[str] = frozenset(),
    *,
    store: Path,
    stale_after: float = STALE_PARTIAL_SECONDS,
) -> list[str]:
    """Remove what `plan_prune` picks; return the names removed."""
    plan = plan_prune(keep, live, store=store, stale_after=stale_after)
    return execute_prune(plan)


def execute_prune(plan: PrunePlan) -> list[str]:
    removed = []
    for path in plan.images:
        _remove(path)
        removed.append(path.name)
    for path in plan.partials:
        shutil.rmtree(path)
        removed.append(path.name)
    for path in plan.leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return removed
