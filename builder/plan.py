"""Plans: what a command that changes something would do, computed before it does it.

`promote`, `rollback`, `glance-prune` and `prune` first compute a plan by
reading only (local store, Glance, Nova), then either print it (`--dry-run`)
or carry it out. Whatever else must look at a change before it happens (a
policy, a lease, a signature check) takes the same plan, so what the
operator previewed is what is checked and what is done.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Step kinds that change something (in Glance, Nova or the local store); the
# others ("reuse", "probe", "keep", "on-failure") only say what happens.
CHANGES = frozenset({"convert", "upload", "delete", "remove", "rebuild", "record"})


@dataclass(frozen=True)
class Step:
    """One thing the command would do: a verb, its object and one line of detail.

    `data` carries the exact values for `--json` (ids, sizes, properties).
    """

    kind: str
    what: str
    detail: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    lines: tuple[str, ...] = ()  # extra lines under the step (e.g. properties)

    @property
    def changes(self) -> bool:
        return self.kind in CHANGES

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "what": self.what, "detail": self.detail, **dict(self.data)}


@dataclass(frozen=True)
class Plan:
    """Everything one command would do, in order; `steps` empty means nothing to do."""

    command: str  # e.g. "promote 2026.11-c735078397ed"
    target: str  # e.g. "server aurora on cloud jasmin"
    steps: tuple[Step, ...]
    summary: str = ""  # one line: the outcome the steps lead to

    @property
    def changes(self) -> list[Step]:
        return [s for s in self.steps if s.changes]

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": True,
            "command": self.command,
            "target": self.target,
            "changes": len(self.changes),
            "summary": self.summary,
            "steps": [s.to_json() for s in self.steps],
        }

    def format_text(self) -> str:
        """The preview for a terminal: a heading, a line per step, the outcome."""
        out = [f"dry run: {self.command} on {self.target}; nothing is changed"]
        width = max((len(s.kind) for s in self.steps), default=0)
        for step in self.steps:
            text = f"  {step.kind:<{width}}  {step.what}"
            out.append(f"{text}: {step.detail}" if step.detail else text)
            out += [f"  {'':<{width}}    {line}" for line in step.lines]
        if not self.steps:
            out.append("  nothing to do")
        if self.summary:
            out.append(self.summary)
        return "\n".join(out) + "\n"
