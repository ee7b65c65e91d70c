"""The proof that a staging image differs from production only in its overlay's keys.

A staging spec is an overlay (`base: aurora.yml` plus a few keys: writers
off, a banner). An image is a pure function of its spec and the other build
inputs, so two images differ only in the overlay's keys when (1) their
inputs are the same except the spec file, and (2) their validated specs
differ only at key paths the overlay sets. `aurora-image diff A B --overlay
SPEC` checks both and lists the rendered files the overlay changes; any
difference outside the overlay's keys fails it (exit 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.errors import AuroraError
from builder.spec.model import load_spec
from builder.spec.yaml_lines import load_yaml_with_lines

if TYPE_CHECKING:
    from builder.image.diff import ImageDiff


class OverlayError(AuroraError):
    """The overlay cannot be judged (no `base:`, unreadable images)."""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key paths of nested mappings; lists and scalars are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out |= _flatten(inner, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: value}


def overlay_keys(path: Path) -> tuple[Path, list[str]]:
    """(the base spec, the key paths the overlay sets)."""
    data, _ = load_yaml_with_lines(path)
    if not isinstance(data, dict) or "base" not in data:
        raise OverlayError(f"{path}: not an overlay (no `base:` naming the spec it changes)")
    del data["base"]
    return load_spec(path).source.bases[0], sorted(_flatten(data))


def _covered(path: str, keys: list[str]) -> bool:
    return any(path == k or path.startswith(f"{k}.") or k.startswith(f"{path}.") for k in keys)


@dataclass
class OverlayProof:
    """What `diff --overlay` reports."""

    overlay: Path
    base: Path
    keys: list[str]
    differing: list[str]
    outside: list[str]
    inputs_outside: list[str] = field(default_factory=list)
    rendered: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.outside and not self.inputs_outside

    def to_json(self) -> dict[str, object]:
        return {
            "overlay": str(self.overlay),
            "base": str(self.base),
            "ok": self.ok,
            "overlay_keys": self.keys,
            "differing_keys": self.differing,
            "outside_overlay": self.outside,
            "inputs_outside_spec": self.inputs_outside,
            "rendered_changed": self.rendered,
            "notes": self.notes,
        }

    def format_text(self) -> str:
        name = self.overlay.name
        if self.ok:
            head = f"overlay {name}: the images differ only in its keys: {', '.join(self.keys)}"
        else:
            parts = []
            if self.outside:
                parts.append(f"spec keys {', '.join(self.outside)}")
            if self.inputs_outside:
                parts.append(f"inputs {', '.join(self.inputs_outside)}")
            head = f"overlay {name}: NOT only its keys differ: also {'; '.join(parts)}"
        lines = [head]
        lines += [f"  rendered: {p}" for p in self.rendered]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def prove(overlay: Path) -> OverlayProof:
    """Compare the overlay's spec with its base, key by key and rendered file by file."""
    from builder.render.engine import render

    base, keys = overlay_keys(overlay)
    a, b = load_spec(base), load_spec(overlay)
    da, db = _flatten(a.model_dump(mode="json")), _flatten(b.model_dump(mode="json"))
    differing = sorted(k for k in da.keys() | db.keys() if da.get(k) != db.get(k))
    ta, tb = render(a), render(b)
    rendered = sorted(p for p in ta.keys() | tb.keys() if ta.get(p) != tb.get(p))
    outside = [d for d in differing if not _covered(d, keys)]
    return OverlayProof(overlay, base, keys, differing, outside, rendered=rendered)


def prove_diff(diff: ImageDiff, overlay: Path) -> OverlayProof:
    """`prove`, plus: the two images' inputs differ in nothing but the spec files, and they
    are the images those specs build from this checkout (else a note says so)."""
    from builder.image.inputs import collect

    proof = prove(overlay)
    inputs = diff.input_files
    proof.inputs_outside = sorted(
        k for k in [*inputs.added, *inputs.removed, *inputs.changed]
        if k != "spec" and not k.startswith("spec-base/")
    )  # fmt: skip
    for path, tag in ((proof.base, diff.a_tag), (overlay, diff.b_tag)):
        built = collect(load_spec(path)).tag
        if built != tag:
            proof.notes.append(
                f"{path.name} builds {built} from this checkout, not {tag}: "
                "the key comparison is of the specs as they are now"
            )
    return proof


@dataclass
class DiffExtras:
    """What `diff` adds to the image comparison: change categories, the overlay proof."""

    categories: list[str]
    proof: OverlayProof | None = None

    @property
    def ok(self) -> bool:
        return self.proof is None or self.proof.ok

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"categories": self.categories}
        if self.proof is not None:
            out["overlay"] = self.proof.to_json()
        return out

    def format_text(self) -> str:
        text = f"change categories: {', '.join(self.categories) or 'none'}\n"
        return text + (self.proof.format_text() if self.proof is not None else "")


def diff_extras(diff: ImageDiff, overlay: Path | None) -> DiffExtras:
    from builder.release.categories import classify

    return DiffExtras(classify(diff), prove_diff(diff, overlay) if overlay else None)
