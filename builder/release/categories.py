"""Change categories: what kind of change a release makes, for review and approval.

Operators scope releases by kind: source syncs, GWS pushes and backups,
nginx/TLS, firewall, credentials, alerting, the app version, packages. Some
kinds need an explicit approval before production takes them
(`deploy.approval_required`, `promote --approve CATEGORY`).

Two readings of the same idea:
- `fingerprints(spec, manifest)`: a short digest per category of the spec
  sections (and the manifest's package set and app inputs) that decide it.
  Every promote records them on the Glance image (`aurora_categories`), so
  the next production promote compares the candidate with what the server
  runs without needing the old spec; an image released before this has
  none, and then every category counts as changed.
- `classify(diff)`: the categories of an `aurora-image diff` between two
  built images, from the rendered paths, packages and inputs that differ.
  The firewall is applied at build time, not rendered, so `diff` names it
  only through the fingerprints (`aurora_categories`), never by guess.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from builder.image.diff import ImageDiff
    from builder.image.manifest import Manifest
    from builder.spec.model import HostSpec

CATEGORIES = (
    "source-sync", "gws", "nginx-tls", "firewall", "credentials", "alerting", "app", "packages",
)  # fmt: skip
PROPERTY = "aurora_categories"
ALERTING = ("alert", "msmtp", "mail")


def _alerting(spec: HostSpec) -> dict[str, Any]:
    jobs = [j.model_dump(mode="json") for j in spec.jobs if "alert" in j.name]
    env = {k: v for k, v in spec.environment.items() if "ALERT" in k or "MAIL" in k}
    return {"jobs": jobs, "environment": env}


def _sections(spec: HostSpec, manifest: Manifest | None) -> dict[str, Any]:
    dump = spec.model_dump(mode="json")
    inputs = manifest.inputs if manifest else None
    recorded = {**inputs.files, **inputs.extra} if inputs else {}
    app_inputs = {k: v for k, v in recorded.items() if k == "app" or k.startswith(("app/", "app."))}
    return {
        "source-sync": dump["source_sync"],
        "gws": [dump["gws"], dump["mirror_verify"]],
        "nginx-tls": [dump["nginx"], dump["hostname"]],
        "firewall": dump["firewall"],
        "credentials": [dump["secrets"], dump["credential_store"]],
        "alerting": _alerting(spec),
        "app": [dump["dashboard"], app_inputs, _packages(manifest, "python")],
        "packages": [
            dump["packages"],
            dump["debian"],
            dump["apt_repositories"],
            _packages(manifest, "debian"),
        ],
    }


def _packages(manifest: Manifest | None, kind: str) -> dict[str, str] | None:
    """The manifest's package set (None without a manifest, as the digests always had)."""
    if manifest is None:
        return None
    return manifest.python_packages if kind == "python" else manifest.debian_packages


def fingerprints(spec: HostSpec, manifest: Manifest | None = None) -> dict[str, str]:
    """category -> 10 hex digits of what decides it (fits one Glance property)."""
    out = {}
    for name, value in _sections(spec, manifest).items():
        blob = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        out[name] = hashlib.sha256(blob).hexdigest()[:10]
    return out


def encode(prints: Mapping[str, str]) -> str:
    return json.dumps(dict(prints), separators=(",", ":"))


def decode(text: str | None) -> dict[str, str]:
    try:
        value = json.loads(text or "")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def changed(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """Categories whose fingerprint differs; all of them when `before` is unknown."""
    if not before:
        return list(CATEGORIES)
    return [c for c in CATEGORIES if before.get(c) != after.get(c)]


def _path_category(path: str) -> str | None:
    name = path.rsplit("/", 1)[-1]
    if "source-sync" in path or name.endswith("-sync"):
        return "source-sync"
    if "gws" in path or "mirror-verify" in path:
        return "gws"
    if path.startswith(("/etc/nginx/", "/etc/letsencrypt")) or "nginx-tls" in path:
        return "nginx-tls"
    if path.startswith("/etc/ufw/"):
        return "firewall"
    if "credential" in path or "authorized_keys" in path:
        return "credentials"
    if any(word in name for word in ALERTING):
        return "alerting"
    if "dashboard" in path:
        return "app"
    return None


def classify(diff: ImageDiff) -> list[str]:
    """The categories an image diff touches (rendered files and units, packages, app)."""
    found: set[str] = set()
    for tree in (diff.units, diff.files):
        for path in [*tree.added, *tree.removed, *(c.path for c in tree.changed)]:
            category = _path_category(path)
            if category:
                found.add(category)
    if diff.debian_packages:
        found.add("packages")
    if diff.python_packages:
        found.add("app")
    inputs = diff.input_files
    for key in [*inputs.added, *inputs.removed, *inputs.changed]:
        if key == "app" or key.startswith(("app/", "app.")):
            found.add("app")
        elif key.startswith("apt-key/"):
            found.add("packages")
    return [c for c in CATEGORIES if c in found]
