"""Release logic against a real Glance (no VM): refusals, upload safety, reuse,
history, releases and Glance pruning.

Glance is the real PyPI service on loopback (tests/release/glance.py). Nova is
the release suite's compute double, which speaks Nova v2.1 over a real socket;
no test here rebuilds, so it never boots anything: each test asserts the
server was left untouched where that is the point.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openstack.image.v2.image import Image

from builder.cli.main import main
from builder.errors import UnknownTag
from builder.image.store import DISK, file_digest, read_manifest, write_attestation
from builder.release.cloud import Cloud, CloudUnreachable, GlanceImage, ImageNotFound, Server
from builder.release.convert import QCOW, QCOW_META, STFC_PROPERTIES, convert
from builder.release.deploy import deploy
from builder.release.errors import NotAttested, ReleaseError
from builder.release.glance import MARK, STATE, UPLOADING, glance_name, is_ready, previous_live
from builder.release.history import record
from builder.release.promote import promote, rollback
from builder.release.prune import glance_prune, select_prune
from builder.release.target import Outcome, Target
from builder.release.upload import ensure_upload
from tests.fake_images import make_image
from tests.release.glance import GlanceServer
from tests.release.nova import NovaDouble

NOW = time.time()


def attested(store: Path, tag: str, *, age: float = 0.0, disk: bytes = b"disk") -> Path:
    path = make_image(store, tag, built_at=NOW - 1000 + age, disk=disk)
    write_attestation(
        path,
        passed=True,
        tests={"tests/vm/test_smoke.py::test_boots": "passed"},
        started=NOW - 60,
        finished=NOW,
    )
    return path


def target(cloud: Cloud, nova: NovaDouble, store: Path) -> Target:
    return Target(cloud=cloud, server=nova.server.name, hostname="data.gamb2le.co.uk", store=store)


def untouched(nova: NovaDouble) -> bool:
    return nova.rebuilds == [] and not any(m == "POST" for m, _ in nova.requests)


# -- refusals: nothing is uploaded, the server is untouched -----------------------


def test_promote_refuses_an_image_without_attestation(
    store: Path, cloud: Cloud, nova: NovaDouble
) -> None:
    make_image(store, "2026.11-aaaa", built_at=NOW)
    with pytest.raises(NotAttested, match=r"2026.11-aaaa: not tested.*make smoke AURORA_IMAGE="):
        promote(target(cloud, nova, store), "2026.11-aaaa")
    assert cloud.images(MARK) == []
    assert untouched(nova)


def test_promote_refuses_a_failed_smoke_run(store: Path, cloud: Cloud, nova: NovaDouble) -> None:
    path = make_image(store, "2026.11-aaaa", built_at=NOW)
    write_attestation(path, passed=False, tests={"t": "failed"}, started=NOW, finished=NOW)
    with pytest.raises(NotAttested, match="the smoke suite failed on it"):
        promote(target(cloud, nova, store), "2026.11-aaaa")
    assert cloud.images(MARK) == []


def test_promote_refuses_a_disk_changed_after_its_attestation(
    store: Path, cloud: Cloud, nova: NovaDouble
) -> None:
    path = attested(store, "2026.11-aaaa")
    with (path / "aurora.raw").open("r+b") as disk:
        disk.write(b"X")  # same size; the digest no longer matches
    with pytest.raises(NotAttested, match=r"the attestation is for disk [0-9a-f]{16}"):
        promote(target(cloud, nova, store), "2026.11-aaaa")
    assert cloud.images(MARK) == []
    assert untouched(nova)


def test_promote_refuses_an_unknown_tag(store: Path, cloud: Cloud, nova: NovaDouble) -> None:
    attested(store, "2026.11-aaaa")
    with pytest.raises(UnknownTag, match=r"unknown image '2026.11-nope'.*holds 2026.11-aaaa"):
        promote(target(cloud, nova, store), "2026.11-nope")
    assert untouched(nova)


def test_glance_down_is_one_clear_error_and_the_server_is_untouched(
    store: Path, cloud: Cloud, nova: NovaDouble, glance: GlanceServer
) -> None:
    attested(store, "2026.11-aaaa")
    glance.stop()
    with pytest.raises(CloudUnreachable) as caught:
        promote(target(cloud, nova, store), "2026.11-aaaa")
    message = str(caught.value)
    assert "\n" not in message
    assert f"image at http://127.0.0.1:{glance.port}" in message
    assert "unreachable" in message and "clouds.yaml" in message
    assert untouched(nova)
    assert not (store / "2026.11-aaaa" / QCOW).exists()


def test_nova_down_is_one_clear_error_before_any_upload(
    store: Path, cloud: Cloud, nova: NovaDouble
) -> None:
    attested(store, "2026.11-aaaa")
    nova.down()
    with pytest.raises(CloudUnreachable, match=rf"compute at {nova.endpoint}.*unreachable"):
        promote(target(cloud, nova, store), "2026.11-aaaa")
    assert cloud.images(MARK) == []


def test_unknown_server_names_the_spec_key(store: Path, cloud: Cloud, nova: NovaDouble) -> None:
    attested(store, "2026.11-aaaa")
    wrong = Target(cloud=cloud, server="no-such-server", hostname="h", store=store)
    with pytest.raises(Exception, match=r"no server named 'no-such-server'.*deploy.server"):
        promote(wrong, "2026.11-aaaa")
    assert cloud.images(MARK) == []


# -- upload: ready only when verified, reused, interrupted uploads never used -------


def test_upload_is_private_tagged_verified_and_carries_the_properties(
    store: Path, cloud: Cloud
) -> None:
    path = attested(store, "2026.11-aaaa")
    upload = ensure_upload(cloud, path)
    image = cloud.image(upload.image.id)
    assert not upload.reused
    assert image.name == "aurora-2026.11-aaaa"
    assert set(image.tags) == {"aurora", "2026.11-aaaa"}
    assert is_ready(image)
    qcow = path / QCOW
    assert image.size == qcow.stat().st_size
    assert image.hash_value == file_digest(qcow, image.hash_algo or "sha512")
    props = image.properties
    assert props["aurora_image_sha256"] == read_manifest(path).disk_sha256(DISK)
    assert len(props["aurora_manifest_sha256"]) == 64
    assert props["aurora_attestation"].startswith("passed 1 smoke tests")
    assert props["aurora_builder_version"]
    assert props["aurora_uploaded_by"] == "tester@unit"
    for key, value in STFC_PROPERTIES.items():
        assert props[key] == value, key
    assert "hw_firmware_type" not in props  # the fake disk has no ESP
    conn = cloud._conn
    assert conn.image.get_image(image.id).visibility == "private"


def test_second_promote_reuses_the_ready_upload_without_converting(
    store: Path, cloud: Cloud
) -> None:
    path = attested(store, "2026.11-aaaa")
    first = ensure_upload(cloud, path)
    (path / QCOW).unlink()  # a reuse must not need the local qcow2 at all
    second = ensure_upload(cloud, path)
    assert second.reused and second.image.id == first.image.id
    assert not (path / QCOW).exists()
    assert [i.id for i in cloud.images(MARK)] == [first.image.id]


def test_qcow2_cache_is_reused_and_renewed_when_the_disk_changes(store: Path) -> None:
    path = attested(store, "2026.11-aaaa")
    first = convert(path)
    mtime = first.path.stat().st_mtime_ns
    assert convert(path).path.stat().st_mtime_ns == mtime
    meta = json.loads((path / QCOW_META).read_text())
    (path / QCOW_META).write_text(json.dumps({**meta, "raw_sha256": "0" * 64}))
    convert(path)
    assert json.loads((path / QCOW_META).read_text()) == meta
    assert not list(path.glob(".*partial"))


def interrupted_upload(cloud: Cloud, tag: str) -> str:
    """What a promote killed mid-upload leaves: a created image, part of the data."""
    created = cloud.create_image(
        glance_name(tag),
        disk_format="qcow2",
        tags=[MARK, tag],
        properties={"aurora_tag": tag, STATE: UPLOADING},
    )

    def cut() -> Iterator[bytes]:
        yield b"QFI\xfb" + b"\0" * 4096
        raise ConnectionError("operator pressed ^C")

    with pytest.raises(Exception):  # noqa: B017 - whatever the SDK makes of the broken stream
        Image.existing(id=created.id).upload(cloud._conn.image, data=cut())
    return created.id


def test_an_interrupted_upload_is_never_used_and_is_replaced(
    store: Path, cloud: Cloud, nova: NovaDouble
) -> None:
    path = attested(store, "2026.11-aaaa")
    broken = interrupted_upload(cloud, "2026.11-aaaa")
    assert not is_ready(cloud.image(broken))
    with pytest.raises(ImageNotFound, match=r"no ready image aurora-2026.11-aaaa"):
        rollback(target(cloud, nova, store), "2026.11-aaaa")
    assert untouched(nova)
    notes: list[str] = []
    upload = ensure_upload(cloud, path, note=notes.append)
    assert not upload.reused and upload.image.id != broken
    assert [i.id for i in cloud.images(MARK)] == [upload.image.id]
    assert notes and "deleting unfinished upload" in notes[0]


def test_a_ready_image_of_another_disk_is_not_overwritten(store: Path, cloud: Cloud) -> None:
    first = ensure_upload(cloud, attested(store / "a", "2026.11-aaaa"))
    other = attested(store / "b", "2026.11-aaaa", disk=b"diff")
    with pytest.raises(ReleaseError, match=r"already holds aurora-2026.11-aaaa .*another disk"):
        ensure_upload(cloud, other)
    assert [i.id for i in cloud.images(MARK)] == [first.image.id]


# -- history, rollback target, releases, prune -----------------------------------


def three_releases(store: Path, cloud: Cloud, nova: NovaDouble) -> dict[str, str]:
    """A, B, C uploaded; A then B were live on the server; C is live now."""
    ids = {}
    server = nova.server.name
    for age, tag in enumerate(("2026.11-aaaa", "2026.11-bbbb", "2026.11-cccc")):
        if ids:  # a new second: Glance's created_at and the history stamps count whole seconds
            time.sleep(1.1)
        ids[tag] = ensure_upload(cloud, attested(store, tag, age=age)).image.id
        record(cloud, ids[tag], server, "promote", "rebuilding")
        record(cloud, ids[tag], server, "promote", "live")
    nova.server.image_id = ids["2026.11-cccc"]
    return ids


def test_history_in_glance_gives_the_previous_live_image(
    store: Path, cloud: Cloud, nova: NovaDouble
) -> None:
    ids = three_releases(store, cloud, nova)
    server = cloud.server(nova.server.name)
    previous = previous_live(cloud.images(MARK), server)
    assert previous is not None and previous.id == ids["2026.11-bbbb"]
    b = cloud.image(ids["2026.11-bbbb"]).properties
    assert b["aurora_promoted_by"] == "tester@unit"
    assert b["aurora_last_outcome"] == "live" and b["aurora_live_server"] == nova.server.name
    history = json.loads(b["aurora_history"])
    assert [event[2:4] for event in history] == [["promote", "live"]]


def test_releases_json_shows_live_history_and_attestation(
    store: Path, cloud: Cloud, nova: NovaDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = three_releases(store, cloud, nova)
    # Local only, untested, and newer than every upload (however slow the machine is).
    make_image(store, "2026.11-dddd", built_at=time.time() + 3600)
    clouds = store.parent / "clouds.yaml"
    clouds.write_text(
        json.dumps({"clouds": {"unit": {
            "auth_type": "none",
            "image_endpoint_override": cloud.endpoint("image").removesuffix("/v2/"),
            "compute_endpoint_override": nova.endpoint,
        }}})
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
        code = main(["releases", "--json", "--cloud", "unit", "--server", nova.server.name])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    assert out["server"]["image_id"] == ids["2026.11-cccc"]
    assert out["server"]["image"] == "aurora-2026.11-cccc"
    rows = {r["tag"]: r for r in out["releases"]}
    assert list(rows) == ["2026.11-dddd", "2026.11-cccc", "2026.11-bbbb", "2026.11-aaaa"]
    assert rows["2026.11-cccc"]["live"] and rows["2026.11-cccc"]["last_good"]
    assert not rows["2026.11-bbbb"]["live"]
    assert rows["2026.11-bbbb"]["promoted_by"] == "tester@unit"
    assert rows["2026.11-bbbb"]["glance"] == "ready" and rows["2026.11-bbbb"]["attested"] is True
    assert rows["2026.11-bbbb"]["history"][0]["outcome"] == "live"
    assert rows["2026.11-dddd"] | {"history": []} == rows["2026.11-dddd"]
    assert rows["2026.11-dddd"]["glance"] == "absent" and rows["2026.11-dddd"]["attested"] is False
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
        code = main(["releases", "--cloud", "unit", "--server", nova.server.name])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    text = captured.out.splitlines()
    assert (
        text[0].startswith(f"server {nova.server.name} (") and "on aurora-2026.11-cccc" in text[0]
    )
    live = next(line for line in text if line.startswith("2026.11-cccc"))
    assert " live " in live and "tester@unit" in live and "promote live" in live


def test_glance_prune_keeps_the_live_image_and_the_one_before(
    store: Path, cloud: Cloud, nova: NovaDouble
) -> None:
    ids = three_releases(store, cloud, nova)
    # D is newer than C but never went live; the server still runs C, before it B.
    ids["2026.11-dddd"] = ensure_upload(cloud, attested(store, "2026.11-dddd", age=9)).image.id
    result = glance_prune(cloud, nova.server.name, keep=0)
    left = {i.id for i in cloud.images(MARK)}
    assert left == {ids["2026.11-cccc"], ids["2026.11-bbbb"]}
    assert sorted(result.removed) == ["aurora-2026.11-aaaa", "aurora-2026.11-dddd"]
    assert result.protected["aurora-2026.11-cccc"].startswith("live on")
    assert result.protected["aurora-2026.11-bbbb"].startswith("live before")


def test_prune_selection_keeps_newest_and_removes_stale_unfinished_uploads(
    store: Path, cloud: Cloud, nova: NovaDouble
) -> None:
    ids = three_releases(store, cloud, nova)
    fresh = interrupted_upload(cloud, "2026.11-eeee")
    images = cloud.images(MARK)
    server = cloud.server(nova.server.name)
    doomed, _ = select_prune(images, server, keep=3)
    assert doomed == []  # three newest ready kept; the unfinished one may still be uploading
    later = Server(server.id, server.name, "ACTIVE", None, ids["2026.11-aaaa"], ())
    stale = [i if i.id != fresh else _aged(i) for i in images]
    doomed, protected = select_prune(stale, later, keep=1)
    assert {i.id for i in doomed} == {ids["2026.11-bbbb"], fresh}
    assert set(protected) == {ids["2026.11-aaaa"], ids["2026.11-cccc"]}


def _aged(image: GlanceImage) -> GlanceImage:
    from dataclasses import replace

    return replace(image, updated_at="2020-01-01T00:00:00Z")


def test_rollback_without_history_names_the_fix(
    store: Path, cloud: Cloud, nova: NovaDouble
) -> None:
    ensure_upload(cloud, attested(store, "2026.11-aaaa"))
    with pytest.raises(ReleaseError, match=r"no image was live on .*aurora-image rollback TAG"):
        rollback(target(cloud, nova, store))
    assert untouched(nova)


def test_cli_reports_glance_down_in_one_line(
    store: Path, cloud: Cloud, nova: NovaDouble, glance: GlanceServer,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    clouds = store.parent / "clouds.yaml"
    clouds.write_text(json.dumps({"clouds": {"unit": {
        "auth_type": "none", "image_endpoint_override": glance.endpoint,
        "compute_endpoint_override": nova.endpoint}}}))  # fmt: skip
    glance.stop()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
        code = main(["glance-prune", "--keep", "1", "--cloud", "unit", "--server", "aurora-test"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("\n") == 1 and err.startswith("aurora-image: cloud unit: image at")


def test_upload_data_is_counted_for_progress(tmp_path: Path) -> None:
    from builder.release.cloud import _Counting

    seen: list[int] = []
    wrapped = _Counting(io.BytesIO(b"x" * 2_500_000), seen.append)
    assert b"".join(iter(wrapped)) == b"x" * 2_500_000
    assert sum(seen) == 2_500_000


def test_a_rebuild_nova_does_not_take_leaves_the_server_and_says_so(
    store: Path, cloud: Cloud, nova: NovaDouble
) -> None:
    image = ensure_upload(cloud, attested(store, "2026.11-aaaa")).image
    server = cloud.server(nova.server.name)
    nova.down()  # between the checks and the rebuild request
    outcome = Outcome("promote", "2026.11-aaaa", server.name)
    with pytest.raises(ReleaseError, match=r"unreachable.*the server was not rebuilt"):
        deploy(target(cloud, nova, store), server, image, action="promote", outcome=outcome,
                       fallback=None)  # fmt: skip
    assert untouched(nova)
    props = cloud.image(image.id).properties
    assert props["aurora_last_outcome"] == "rebuild-refused"
    assert "aurora_live_at" not in props
