"""`--dry-run`: promote, rollback, glance-prune and prune print exactly what they
would do, change nothing, exit 0; the same plan is what a real run carries out.

Against the real Glance and the Nova double of test_release (no VM boots):
after each dry run Glance holds the same images with the same properties, the
double saw no write, and the local store has no new file (no qcow2 cache).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from builder.cli.main import main
from builder.image.store import disk_digest
from builder.release import meta as release_meta
from builder.release.cloud import Cloud
from builder.release.convert import QCOW, convert
from builder.release.glance import MARK, READY, STATE, glance_images
from builder.release.history import record
from builder.release.preview import preview
from builder.release.promote import plan_promote
from builder.release.upload import ensure_upload, execute_upload
from tests.fake_images import make_image
from tests.release.nova import NovaDouble
from tests.unit.release.test_release import attested, target, untouched


def clouds_yaml(store: Path, cloud: Cloud, nova: NovaDouble) -> Path:
    path = store.parent / "clouds.yaml"
    path.write_text(
        json.dumps({"clouds": {"unit": {
            "auth_type": "none",
            "image_endpoint_override": cloud.endpoint("image").removesuffix("/v2/"),
            "compute_endpoint_override": nova.endpoint,
        }}})
    )  # fmt: skip
    return path


def snapshot(cloud: Cloud) -> dict[str, tuple[str, dict[str, str]]]:
    """Every aurora image and metadata image in Glance: status and properties."""
    images = [*glance_images(cloud), *release_meta.companions(cloud)]
    return {i.id: (i.status, dict(i.properties)) for i in images}


def files(store: Path) -> set[str]:
    return {str(p.relative_to(store)) for p in store.rglob("*")}


def run(capsys: pytest.CaptureFixture[str], clouds: Path, *argv: str) -> tuple[int, str, str]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
        code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def server_args(nova: NovaDouble) -> list[str]:
    return ["--cloud", "unit", "--server", nova.server.name, "--address", "127.0.0.1"]


def test_promote_dry_run_names_the_upload_and_the_rebuild_and_changes_nothing(
    store: Path, cloud: Cloud, nova: NovaDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    old = ensure_upload(cloud, attested(store, "2026.11-aaaa")).image
    nova.server.image_id = old.id
    path = attested(store, "2026.11-bbbb", age=5, disk=b"newer")
    clouds = clouds_yaml(store, cloud, nova)
    before, on_disk = snapshot(cloud), files(store)
    code, out, err = run(capsys, clouds, "promote", "2026.11-bbbb", "--dry-run", *server_args(nova))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (
        f"dry run: promote 2026.11-bbbb on server {nova.server.name} on cloud unit; "
        "nothing is changed"
    )
    upload = next(line for line in lines if "upload" in line and "aurora-2026.11-bbbb:" in line)
    assert "qcow2" in upload and "private" in upload and "tags aurora 2026.11-bbbb" in upload
    assert any(line.strip() == "aurora_tag=2026.11-bbbb" for line in lines)
    assert any(line.strip() == "aurora_state=uploading" for line in lines)
    assert any("convert" in line and str(path / "aurora.raw") in line for line in lines)
    assert any("aurora-2026.11-bbbb-meta" in line and "release metadata" in line for line in lines)
    rebuild = next(line for line in lines if line.lstrip().startswith("rebuild"))
    assert f"server {nova.server.name}" in rebuild
    assert "from aurora-2026.11-aaaa to aurora-2026.11-bbbb" in rebuild
    assert any(line.lstrip().startswith("probe") and "root@127.0.0.1" in line for line in lines)
    fallback = next(line for line in lines if line.lstrip().startswith("on-failure"))
    assert f"rebuild {nova.server.name} from aurora-2026.11-aaaa" in fallback
    assert lines[-1].startswith(f"then {nova.server.name} is rebuilt on aurora-2026.11-bbbb")
    assert snapshot(cloud) == before
    assert files(store) == on_disk  # no qcow2 written into the store
    assert untouched(nova)

    code, out, err = run(
        capsys, clouds, "promote", "2026.11-bbbb", "--dry-run", "--json", *server_args(nova)
    )
    assert code == 0, err
    plan = json.loads(out)
    assert plan["dry_run"] is True and plan["changes"] >= 4
    [up] = [
        s for s in plan["steps"] if s["kind"] == "upload" and s["what"] == "aurora-2026.11-bbbb"
    ]
    assert up["disk_format"] == "qcow2" and up["visibility"] == "private"
    assert up["properties"]["aurora_image_sha256"] == disk_digest(path)
    assert up["properties"]["aurora_attestation"].startswith("passed 1 smoke tests")
    # The size shown is the size the real promote uploads.
    real = convert(path)
    assert up["size"] == real.size
    [rb] = [s for s in plan["steps"] if s["kind"] == "rebuild"]
    assert rb["from_image_id"] == old.id and rb["to_image"] == "aurora-2026.11-bbbb"
    assert snapshot(cloud) == before and untouched(nova)


def test_promote_dry_run_of_an_uploaded_image_says_reuse(
    store: Path, cloud: Cloud, nova: NovaDouble
) -> None:
    path = attested(store, "2026.11-aaaa")
    image = ensure_upload(cloud, path).image
    (path / QCOW).unlink()
    aimed = target(cloud, nova, store)
    shown = preview(aimed, plan_promote(aimed, "2026.11-aaaa"))
    kinds = [s.kind for s in shown.steps]
    assert kinds[0] == "reuse" and "upload" not in kinds and "convert" not in kinds
    assert image.id in shown.steps[0].what
    assert not (path / QCOW).exists()


def test_promote_dry_run_of_the_running_image_probes_only(
    store: Path, cloud: Cloud, nova: NovaDouble
) -> None:
    image = ensure_upload(cloud, attested(store, "2026.11-aaaa")).image
    nova.server.image_id = image.id
    aimed = target(cloud, nova, store)
    shown = preview(aimed, plan_promote(aimed, "2026.11-aaaa"))
    assert "rebuild" not in [s.kind for s in shown.steps]
    assert "already runs it: not rebuilt" in shown.format_text()


def test_promote_dry_run_refuses_what_promote_refuses(
    store: Path, cloud: Cloud, nova: NovaDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    make_image(store, "2026.11-aaaa", built_at=time.time())
    clouds = clouds_yaml(store, cloud, nova)
    code, out, err = run(capsys, clouds, "promote", "2026.11-aaaa", "--dry-run", *server_args(nova))
    assert code == 1 and out == "", err
    assert "not tested" in err and err.count("\n") == 1


def test_rollback_dry_run_names_the_image_live_before(
    store: Path, cloud: Cloud, nova: NovaDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = {}
    for age, tag in enumerate(("2026.11-aaaa", "2026.11-bbbb")):
        if ids:
            time.sleep(1.1)  # a new second: Glance's stamps count whole seconds
        ids[tag] = ensure_upload(cloud, attested(store, tag, age=age)).image.id
        record(cloud, ids[tag], nova.server.name, "promote", "live")
    nova.server.image_id = ids["2026.11-bbbb"]
    clouds = clouds_yaml(store, cloud, nova)
    before = snapshot(cloud)
    code, out, err = run(capsys, clouds, "rollback", "--dry-run", *server_args(nova))
    assert code == 0, err
    rebuild = next(line for line in out.splitlines() if line.lstrip().startswith("rebuild"))
    assert "from aurora-2026.11-bbbb to aurora-2026.11-aaaa" in rebuild
    assert "live on" in rebuild and "before aurora-2026.11-bbbb" in rebuild
    code, out, _ = run(capsys, clouds, "rollback", "--dry-run", "--json", *server_args(nova))
    plan = json.loads(out)
    assert plan["command"] == "rollback 2026.11-aaaa"
    assert [s["kind"] for s in plan["steps"]] == ["record", "rebuild", "probe", "on-failure"]
    assert snapshot(cloud) == before and untouched(nova)


def test_glance_prune_dry_run_lists_what_goes_and_deletes_nothing(
    store: Path, cloud: Cloud, nova: NovaDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = {}
    for age, tag in enumerate(("2026.11-aaaa", "2026.11-bbbb", "2026.11-cccc")):
        if ids:
            time.sleep(1.1)  # a new second, as above
        ids[tag] = ensure_upload(cloud, attested(store, tag, age=age)).image.id
        record(cloud, ids[tag], nova.server.name, "promote", "live")
    nova.server.image_id = ids["2026.11-cccc"]
    clouds = clouds_yaml(store, cloud, nova)
    before = snapshot(cloud)
    argv = ["glance-prune", "--keep", "0", "--cloud", "unit", "--server", nova.server.name]
    code, out, err = run(capsys, clouds, *argv, "--dry-run")
    assert code == 0, err
    deletes = [line for line in out.splitlines() if line.lstrip().startswith("delete")]
    assert len(deletes) == 2  # A and its metadata image
    assert any(f"aurora-2026.11-aaaa ({ids['2026.11-aaaa']})" in line for line in deletes)
    assert any("aurora-2026.11-aaaa-meta" in line for line in deletes)
    assert any(line.lstrip().startswith("keep") and "aurora-2026.11-cccc: live on" in line
               for line in out.splitlines())  # fmt: skip
    assert snapshot(cloud) == before
    code, out, err = run(capsys, clouds, *argv, "--dry-run", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["dry_run"] is True and data["removed"] == ["aurora-2026.11-aaaa"]
    assert snapshot(cloud) == before
    # The real run deletes exactly what the dry run listed, metadata included.
    code, out, err = run(capsys, clouds, *argv, "--json")
    assert code == 0, err
    assert json.loads(out)["removed"] == ["aurora-2026.11-aaaa"]
    left = snapshot(cloud)
    assert set(before) - set(left) == {ids["2026.11-aaaa"], _meta_id(before, "aaaa")}


def _meta_id(snap: dict[str, tuple[str, dict[str, str]]], suffix: str) -> str:
    [meta] = [
        i for i, (_, p) in snap.items()
        if p.get("aurora_kind") == release_meta.KIND and p["aurora_tag"].endswith(suffix)
    ]  # fmt: skip
    return meta


def test_prune_dry_run_removes_nothing_and_lists_what_would_go(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    tags = [f"2026.11-{c * 12}" for c in "abcd"]
    for i, tag in enumerate(tags):
        make_image(store, tag, built_at=now - 100 + i)
    stale = store / ".2026.11-old.partial"
    stale.mkdir()
    os.utime(stale, (now - 7200, now - 7200))
    on_disk = files(store)
    code = main(["prune", "--keep", "1", "--live", tags[1], "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    removes = [line.split()[1].rstrip(":") for line in out.splitlines()
               if line.lstrip().startswith("remove")]  # fmt: skip
    assert removes == [tags[2], tags[0], ".2026.11-old.partial"]
    assert any(line.lstrip().startswith("keep") and tags[1] in line for line in out.splitlines())
    assert files(store) == on_disk
    code = main(["prune", "--keep", "1", "--live", tags[1], "--dry-run", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    plan = json.loads(out)
    assert [s["what"] for s in plan["steps"] if s["kind"] == "remove"] == removes
    assert plan["dry_run"] is True and plan["removed"] == removes
    assert plan["kept"] == [tags[3], tags[1]]
    assert files(store) == on_disk
    code = main(["prune", "--keep", "1", "--live", tags[1], "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["removed"] == removes


def test_a_plan_executed_does_what_it_showed(store: Path, cloud: Cloud, nova: NovaDouble) -> None:
    """The upload the preview describes is the upload execute makes (name, size, props)."""
    path = attested(store, "2026.11-aaaa")
    plan = plan_promote(target(cloud, nova, store), "2026.11-aaaa")
    [shown] = [s for s in preview(target(cloud, nova, store), plan).steps
               if s.kind == "upload" and s.what == "aurora-2026.11-aaaa"]  # fmt: skip
    assert plan.upload is not None
    done = execute_upload(cloud, plan.upload, note=lambda _t: None)
    image = cloud.image(done.image.id)
    assert image.name == shown.data["name"] and image.size == shown.data["size"]
    for key, value in shown.data["properties"].items():
        if key not in ("aurora_uploaded_at", STATE):
            assert image.properties[key] == value, key
    assert image.prop(STATE) == READY
    assert [i.id for i in cloud.images(MARK)] == [image.id]
    assert (path / QCOW).exists()
