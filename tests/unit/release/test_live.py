"""Any operator, not only the build machine: `render --diff`, `diff` and `audit`
against what is live, from a second clone whose images/ directory is empty.

One store builds and uploads (real Glance, as promote does); the Nova double's
server runs the upload. Every command then runs with AURORA_IMAGES pointing at
an empty directory, so all it knows about the release comes from Glance: the
metadata image that travelled with the upload, checked against the digests on
the release. The image's rendered files are the spec's own rendering.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.cli.main import main
from builder.image.store import MANIFEST, RENDERED_TAR, read_manifest, write_attestation
from builder.release import meta as release_meta
from builder.release.cloud import Cloud
from builder.release.glance import MARK, glance_images
from builder.release.probing import release_manifest
from builder.release.upload import ensure_upload
from builder.render.engine import File, Tree, render
from builder.spec.model import load_spec
from tests.fake_images import make_image
from tests.paths import REPO_ROOT
from tests.release.nova import NovaDouble
from tests.sshd import missing_tools, running_sshd
from tests.unit.release.test_dry_run import clouds_yaml
from tests.unit.release.test_release import NOW

REPO = REPO_ROOT
SPEC = REPO / "hosts" / "aurora.yml"
DASHBOARD = "/etc/systemd/system/aurora-dashboard.service"


@pytest.fixture(scope="module")
def tree() -> Tree:
    return render(load_spec(SPEC))


@pytest.fixture
def released(store: Path, cloud: Cloud, nova: NovaDouble, tree: Tree) -> Iterator[tuple[str, Path]]:
    """The spec's image built and uploaded from the build store, live on the server."""
    tag = "2026.11-aaaaaaaaaaaa"
    path = attested_copy(make_image(store, tag, built_at=NOW, tree=tree))
    image = ensure_upload(cloud, path, note=lambda _t: None).image
    nova.server.image_id = image.id
    yield tag, path


def attested_copy(path: Path) -> Path:
    """The image attested, as the smoke suite leaves it before a promote."""
    write_attestation(path, passed=True, tests={"t::smoke": "passed"}, started=NOW, finished=NOW)
    return path


@pytest.fixture
def empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The second clone's store: nothing in it."""
    other = tmp_path / "other-clone" / "images"
    other.mkdir(parents=True)
    monkeypatch.setenv("AURORA_IMAGES", str(other))
    return other


def cli(capsys: pytest.CaptureFixture[str], clouds: Path, *argv: str) -> tuple[int, str, str]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
        code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def overlay(tmp_path: Path, text: str) -> Path:
    shutil.copy(SPEC, tmp_path / "aurora.yml")
    path = tmp_path / "site.yml"
    path.write_text("base: aurora.yml\n" + text)
    return path


def test_render_diff_against_live_from_an_empty_store(
    released: tuple[str, Path], empty: Path, cloud: Cloud, nova: NovaDouble, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    tag, _ = released
    clouds = clouds_yaml(empty, cloud, nova)
    where = ["--cloud", "unit", "--server", nova.server.name]
    argv = ["render", "--diff", "--against", "live", *where]
    code, out, err = cli(capsys, clouds, *argv, "--exit-code", "--spec", str(SPEC))
    assert code == 0, err
    last = out.splitlines()[-1]
    assert last.startswith(f"no changes against image {tag} (live on {nova.server.name}, ")
    assert f"Glance image aurora-{tag} (" in last
    spec = overlay(tmp_path, "dashboard:\n  port: 5123\n")
    code, out, err = cli(capsys, clouds, *argv, "--exit-code", "--spec", str(spec))
    assert code == 1, err  # like git diff --exit-code: the spec changes rendered files
    assert f"~ {DASHBOARD}" in out
    assert any(line.strip().startswith("+") and "--port=5123" in line for line in out.splitlines())
    code, out, err = cli(capsys, clouds, *argv, "--spec", str(spec), "--json")
    assert code == 0, err
    assert json.loads(out)["changed"] is True
    assert list(empty.iterdir()) == []  # nothing was written into the second store


def test_diff_live_against_a_tag_only_glance_holds(
    released: tuple[str, Path], store: Path, empty: Path, cloud: Cloud, nova: NovaDouble,
    tree: Tree, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    tag, _ = released
    unit = tree[DASHBOARD].content.replace(b"--port=5006", b"--port=5123")
    newer = {**tree, DASHBOARD: File(unit, mode=tree[DASHBOARD].mode)}
    other = make_image(store / "b", "2026.11-bbbbbbbbbbbb", built_at=NOW + 10, tree=newer)
    ensure_upload(cloud, attested_copy(other), note=lambda _t: None)
    clouds = clouds_yaml(empty, cloud, nova)
    code, out, err = cli(
        capsys, clouds, "diff", "live", "2026.11-bbbbbbbbbbbb",
        "--cloud", "unit", "--server", nova.server.name,
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"a: {tag}  (live on {nova.server.name}, Glance image aurora-")
    assert lines[1].startswith("b: 2026.11-bbbbbbbbbbbb  (Glance image aurora-2026.11-bbbbbbbbbbbb")
    assert f"  ~ {DASHBOARD}" in lines
    assert any("+" in line and "--port=5123" in line for line in lines)
    code, out, _ = cli(
        capsys, clouds, "diff", "--json", "live", "2026.11-bbbbbbbbbbbb",
        "--cloud", "unit", "--server", nova.server.name,
    )  # fmt: skip
    data = json.loads(out)
    assert data["a"]["tag"] == tag and data["a"]["path"] is None
    assert [c["path"] for c in data["units"]["changed"]] == [DASHBOARD]


def test_the_metadata_in_glance_is_the_build_stores_files(
    released: tuple[str, Path], cloud: Cloud, tmp_path: Path
) -> None:
    tag, path = released
    [image] = [i for i in glance_images(cloud) if i.name == f"aurora-{tag}"]
    [meta] = release_meta.companions(cloud, tag)
    assert image.prop("aurora_meta_image") == meta.id
    assert meta.name == f"aurora-{tag}-meta"
    assert cloud._conn.image.get_image(meta.id).is_hidden is True  # not in `image list`
    assert meta.id not in [i.id for i in cloud.images(MARK)]
    got = release_meta.fetch(cloud, image, tmp_path / "fetched")
    for name in (MANIFEST, RENDERED_TAR, "attestation.json"):
        assert (got / name).read_bytes() == (path / name).read_bytes(), name


def test_metadata_that_is_not_the_releases_is_refused(
    released: tuple[str, Path], store: Path, cloud: Cloud, nova: NovaDouble, empty: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    tag, _ = released
    [image] = [i for i in glance_images(cloud) if i.name == f"aurora-{tag}"]
    # Someone points the release at another image's metadata (say, edited by hand).
    other = make_image(store / "x", "2026.11-cccccccccccc", built_at=NOW, tree={})
    forged, _ = release_meta.upload(cloud, attested_copy(other), "2026.11-cccccccccccc")
    cloud.set_properties(image.id, aurora_meta_image=forged.id)
    clouds = clouds_yaml(empty, cloud, nova)
    code, out, err = cli(
        capsys, clouds, "render", "--diff", "--against", "live", "--spec", str(SPEC),
        "--cloud", "unit", "--server", nova.server.name,
    )  # fmt: skip
    assert code == 1 and out == "", err
    assert err.count("\n") == 1
    assert f"aurora-2026.11-cccccccccccc-meta ({forged.id}) has sha256" in err
    assert f"promote {tag} again" in err


def test_a_release_uploaded_before_metadata_names_the_fix_and_promote_attaches_it(
    store: Path, cloud: Cloud, nova: NovaDouble, tree: Tree, empty: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    tag = "2026.11-dddddddddddd"
    path = attested_copy(make_image(store, tag, built_at=NOW, tree=tree))
    image = ensure_upload(cloud, path, note=lambda _t: None).image
    # As an upload made before releases carried their metadata: no companion.
    for meta in release_meta.companions(cloud, tag):
        cloud.delete_image(meta.id)
    done = cloud._conn.image.patch(
        f"/images/{image.id}",
        json=[
            {"op": "remove", "path": f"/{key}"}
            for key in ("aurora_meta_image", "aurora_meta_sha256")
        ],
        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
    )
    assert done.status_code == 200 and "aurora_meta_image" not in cloud.image(image.id).properties
    nova.server.image_id = image.id
    clouds = clouds_yaml(empty, cloud, nova)
    argv = ["render", "--diff", "--against", "live", "--spec", str(SPEC), "--cloud", "unit",
            "--server", nova.server.name]  # fmt: skip
    code, _, err = cli(capsys, clouds, *argv)
    assert code == 1, err
    assert "carries no release metadata" in err and f"aurora-image promote {tag}" in err
    # The build machine promotes again: the ready upload is reused, metadata attached.
    again = ensure_upload(cloud, path, note=lambda _t: None)
    assert again.reused and again.image.id == image.id
    assert again.image.prop("aurora_meta_image")
    code, out, err = cli(capsys, clouds, *argv, "--exit-code")
    assert code == 0, err
    assert out.startswith(f"no changes against image {tag}")


@pytest.mark.skipif(bool(missing_tools()), reason=f"needs {missing_tools()}")
def test_audit_live_from_an_empty_store_reads_the_manifest_from_glance(
    released: tuple[str, Path], cloud: Cloud, nova: NovaDouble, empty: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A real sshd on loopback stands in for the host: this machine is not the image,
    so it drifts; the point is which manifest the audit compared it with."""
    tag, path = released
    manifest = read_manifest(path)
    clouds = clouds_yaml(empty, cloud, nova)
    with running_sshd(tmp_path / "ssh") as (server,):
        config = tmp_path / "ssh_config"
        config.write_text(
            f"Host *\n  UserKnownHostsFile {server.known_hosts}\n  StrictHostKeyChecking yes\n"
            "  KexAlgorithms curve25519-sha256\n"
        )
        code, out, err = cli(
            capsys, clouds, "audit", f"{server.user}@{server.host}",
            "--ssh-port", str(server.port), "--identity", str(server.client_key),
            "--ssh-config", str(config), "--image", "live",
            "--cloud", "unit", "--server", nova.server.name, "--json",
        )  # fmt: skip
    assert code == 1, err  # drift: the build host is not the image
    report = json.loads(out)
    assert report["image"] == tag
    files = {r["what"] for r in report["rows"] if r["kind"] == "file"}
    assert files == set(manifest.rendered)
    debian = {r["what"] for r in report["rows"] if r["kind"] == "debian"}
    assert set(manifest.debian_packages) <= debian
    assert list(empty.iterdir()) == []


def test_the_bundle_is_deterministic(store: Path, tree: Tree) -> None:
    path = attested_copy(make_image(store, "2026.11-eeeeeeeeeeee", built_at=NOW, tree=tree))
    first = release_meta.bundle(path)
    (path / MANIFEST).touch()
    assert release_meta.bundle(path) == first
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(first))) as tar:
        assert tar.getnames() == [MANIFEST, RENDERED_TAR, "attestation.json"]


def test_a_rollback_from_another_clone_probes_against_the_manifest_in_glance(
    released: tuple[str, Path], cloud: Cloud, empty: Path
) -> None:
    """The probe's drift check needs the manifest too; an empty store gets it from Glance."""
    tag, path = released
    [image] = [i for i in glance_images(cloud) if i.name == f"aurora-{tag}"]
    assert release_manifest(cloud, image, empty) == read_manifest(path)
