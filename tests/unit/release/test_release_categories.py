"""Change categories from the real spec: each category's fingerprint moves only
when its own sections change, and an image diff is classified by what differs."""

from __future__ import annotations

from pathlib import Path

from builder.image.diff import diff_images
from builder.image.inputs import REPO
from builder.release.categories import CATEGORIES, changed, classify, decode, encode, fingerprints
from builder.spec.model import load_spec
from tests.fake_images import BASE_DEBIAN, BASE_TREE, make_image

SPEC = REPO / "hosts" / "aurora.yml"


def overlay(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "overlay.yml"
    path.write_text(f"base: {SPEC}\n{text}")
    return path


def test_each_category_moves_alone(tmp_path: Path) -> None:
    base = fingerprints(load_spec(SPEC))
    assert list(base) == list(CATEGORIES) and all(len(v) == 10 for v in base.values())
    cases = {
        "firewall": "firewall:\n  allow: ['22/tcp']\n",
        "nginx-tls": "nginx:\n  proxy_timeout: 60s\n",
        "gws": "gws:\n  jitter: 90s\n",
        "packages": "debian:\n  snapshot: 20261101T000000Z\n",
        "credentials": "credential_store: /data/elsewhere\n",
    }
    for category, text in cases.items():
        after = fingerprints(load_spec(overlay(tmp_path, text)))
        assert changed(base, after) == [category], category


def test_unknown_before_means_everything_changed() -> None:
    prints = fingerprints(load_spec(SPEC))
    assert changed({}, prints) == list(CATEGORIES)
    assert decode(encode(prints)) == prints and len(encode(prints)) < 255
    assert decode("not json") == {}


def test_image_diff_is_classified(tmp_path: Path) -> None:
    from builder.render.engine import File

    a = make_image(tmp_path, "2026.11-aaaa", built_at=1.0)
    tree = dict(BASE_TREE)
    tree["/etc/aurora/source-sync/cl61.json"] = File(b'{"stream": "cl61", "host": "x"}\n')
    tree["/etc/nginx/snippets/aurora-headers.conf"] = File(b"add_header X 1;\n")
    b = make_image(tmp_path, "2026.11-bbbb", built_at=2.0, tree=tree,
                   debian=BASE_DEBIAN | {"nginx": "1.26.4-1"})  # fmt: skip
    assert classify(diff_images(a, b)) == ["source-sync", "nginx-tls", "packages"]
