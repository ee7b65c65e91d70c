"""Release gates against a real Glance (tests/unit/conftest.py) and two Nova doubles
(staging, production): the lease (one operator at a time), signed releases, the
production policy, hidden superseded images, soak and evidence.

Glance is the real PyPI service on loopback (tests/release/glance.py). Nova
is the release suite's compute double over a real socket, two of them as two
servers, in the mode that boots no VM (a rebuild makes the root disk and goes
ACTIVE); the probe is a stub injected through Target.prober, so the soak and
its automatic rollback run the real release code without a guest. Each
refusal asserts the server was left untouched. The signing key is made per run.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openstack
import pytest

from builder.cli.main import main
from builder.image.store import DISK, read_manifest, write_attestation
from builder.release import gates, lease, signing
from builder.release.cloud import Cloud, GlanceImage
from builder.release.errors import ReleaseFailed
from builder.release.glance import MARK
from builder.release.history import record, releases
from builder.release.policy import BASE_TAG, PolicyRefused, StagingServer, check_production
from builder.release.promote import execute, plan_promote
from builder.release.prune import glance_prune
from builder.release.signing import SignatureError
from builder.release.target import Target
from builder.release.upload import ensure_upload
from tests.fake_images import make_image
from tests.release.glance import GlanceServer
from tests.release.nova import NovaDouble

NOW = time.time()


def _double(glance: GlanceServer, root: Path, name: str) -> NovaDouble:
    return NovaDouble(root, glance_endpoint=glance.endpoint, name=name, boot=False)


@pytest.fixture(scope="module")
def staging(glance: GlanceServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaDouble]:
    double = _double(glance, tmp_path_factory.mktemp("nova-staging"), "aurora-staging")
    yield double
    double.close()


@pytest.fixture(scope="module")
def production(
    glance: GlanceServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NovaDouble]:
    double = _double(glance, tmp_path_factory.mktemp("nova-production"), "aurora")
    yield double
    double.close()


def connect(glance: GlanceServer, nova: NovaDouble, name: str) -> Cloud:
    conn = openstack.connect(
        auth_type="none",
        image_endpoint_override=glance.endpoint,
        compute_endpoint_override=nova.endpoint,
    )
    return Cloud(conn, name)


@pytest.fixture
def clouds(glance: GlanceServer, staging: NovaDouble, production: NovaDouble) -> dict[str, Cloud]:
    """One cloud per server (the same Glance), no aurora images, no leases."""
    made = {
        "staging": connect(glance, staging, "stfc"),
        "production": connect(glance, production, "stfc"),
    }
    c = made["production"]
    for image in c.images(MARK) + c.images(MARK, hidden=True):
        c.delete_image(image.id)
    for nova in (staging, production):
        nova.server.metadata.clear()
        nova.requests.clear()
        nova.rebuilds.clear()
    return made


@pytest.fixture
def store(store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The release tests' store (tests/unit/conftest.py), operated by alice@ops, with
    the lease's settle time short."""
    monkeypatch.setenv("AURORA_OPERATOR", "alice@ops")
    monkeypatch.setattr(lease, "SETTLE_SECONDS", 0.05)
    return store


def keypair(where: Path, principal: str) -> tuple[Path, Path]:
    """A per-run ed25519 key and an allowed_signers file naming it."""
    where.mkdir(parents=True, exist_ok=True)
    key = where / "signing_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f",
                    str(key)], check=True, capture_output=True)  # fmt: skip
    allowed = where / "allowed_signers"
    public = key.with_suffix(".pub").read_text()
    allowed.write_text(f'{principal} namespaces="aurora-image" {public}')
    return key, allowed


@pytest.fixture
def signer(tmp_path: Path) -> tuple[Path, Path]:
    return keypair(tmp_path / "keys", "alice@ops")


def attested(store: Path, tag: str, *, disk: bytes = b"disk") -> Path:
    path = make_image(store, tag, built_at=NOW, disk=disk)
    write_attestation(path, passed=True, tests={"tests/vm/test_smoke.py::t": "passed"},
                      started=NOW - 60, finished=NOW)  # fmt: skip
    return path


def untouched(nova: NovaDouble) -> bool:
    """No rebuild and no change but (possibly) lease metadata."""
    return nova.rebuilds == [] and all(
        "/metadata" in path for method, path in nova.requests if method != "GET"
    )


def never() -> None:
    raise AssertionError("the release ran although a gate should have refused it")


def target_of(cloud: Cloud, nova: NovaDouble, store: Path) -> Target:
    return Target(cloud=cloud, server=nova.server.name, hostname="data.gamb2le.co.uk", store=store)


# -- 5. one operator at a time -------------------------------------------------------


def test_a_second_operator_is_refused_with_holder_and_expiry(
    store: Path, clouds: dict[str, Cloud], production: NovaDouble,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    attested(store, "2026.11-aaaa")
    cloud = clouds["production"]
    server = cloud.server(production.server.name)
    with lease.held(cloud, server.id, server.name, holder="alice@ops", action="promote x",
                    ttl=600) as mine:  # fmt: skip
        meta = production.server.metadata
        assert meta["aurora_lease_holder"] == "alice@ops"
        shown = releases(cloud, server.name, store).to_json()["server"]["lease"]
        assert shown.startswith("alice@ops for promote x since")
        assert meta["aurora_lease_action"] == "promote x"
        monkeypatch.setenv("AURORA_OPERATOR", "bob@ops")
        with pytest.raises(lease.LeaseHeld) as caught:
            gates.guarded_promote(target_of(cloud, production, store), "2026.11-aaaa",
                                  gates.Gates(), never)  # fmt: skip
        message = str(caught.value)
        until = mine.lease.expires.strftime(lease.STAMP)
        assert "\n" not in message
        assert "leased by alice@ops for promote x since" in message
        assert f"until {until}" in message and "--break-lease" in message
        assert cloud.images(MARK) == [] and untouched(production)
        # Bob breaks it: Alice's run ends and leaves Bob's lease alone.
        taken = lease.take(cloud, server.id, server.name, holder="bob@ops", action="rollback",
                           break_lease=True, settle=0)  # fmt: skip
        assert taken.broken and taken.replaced is not None
        assert taken.replaced.holder == "alice@ops"
    assert production.server.metadata["aurora_lease_holder"] == "bob@ops"
    assert lease.give_back(cloud, server.id, taken.lease)
    assert not any(k.startswith("aurora_lease_") for k in production.server.metadata)


def test_an_expired_lease_is_taken_over_and_said(
    clouds: dict[str, Cloud], production: NovaDouble
) -> None:
    cloud = clouds["production"]
    server = cloud.server(production.server.name)
    then = datetime.now(UTC) - timedelta(hours=5)
    stale = lease.new_lease("carol@ops", "promote old", 3600, then)
    cloud.set_server_metadata(server.id, **stale.to_metadata())
    notes: list[str] = []
    with lease.held(cloud, server.id, server.name, holder="alice@ops", action="rollback",
                    note=notes.append) as taken:  # fmt: skip
        assert taken.replaced is not None and not taken.broken
    assert notes and "took over the expired lease of carol@ops for promote old" in notes[0]
    assert not any(k.startswith("aurora_lease_") for k in production.server.metadata)


def test_racing_operators_one_backs_off(clouds: dict[str, Cloud], production: NovaDouble) -> None:
    """Both read no lease; Bob's write lands after Alice's: Alice backs off, Bob proceeds."""
    cloud = clouds["production"]
    server = cloud.server(production.server.name)
    bob = lease.new_lease("bob@ops", "promote y", 600, datetime.now(UTC))
    real_set = cloud.set_server_metadata

    def alice_then_bob(server_id: str, **items: str) -> None:
        real_set(server_id, **items)
        real_set(server_id, **bob.to_metadata())

    cloud.set_server_metadata = alice_then_bob  # type: ignore[method-assign]
    with pytest.raises(lease.LeaseHeld, match=r"at the same moment: now held by bob@ops"):
        lease.take(cloud, server.id, server.name, holder="alice@ops", action="x", settle=0)
    assert production.server.metadata["aurora_lease_id"] == bob.id


# -- 7. signed releases ------------------------------------------------------------------


def test_signed_image_verifies_and_names_the_signer(store: Path, signer: tuple[Path, Path]) -> None:
    key, allowed = signer
    path = attested(store, "2026.11-aaaa")
    statement = signing.sign(path, key)
    assert statement["disk_sha256"] == read_manifest(path).disk_sha256(DISK)
    assert (path / signing.SIGNATURE).read_text().startswith("-----BEGIN SSH SIGNATURE-----")
    verified = signing.verify_local(path, allowed)
    assert verified.signer == "alice@ops" and verified.statement == statement


@pytest.mark.parametrize("part", ["manifest.json", "attestation.json"])
def test_tampered_after_signing_is_refused_in_one_line(
    store: Path, signer: tuple[Path, Path], part: str
) -> None:
    key, allowed = signer
    path = attested(store, "2026.11-aaaa")
    signing.sign(path, key)
    with (path / part).open("a") as f:
        f.write(" ")
    with pytest.raises(SignatureError) as caught:
        signing.verify_local(path, allowed)
    text = str(caught.value)
    assert "\n" not in text and "tampered" in text
    assert part.split(".")[0] in text


def test_a_forged_statement_is_refused(store: Path, signer: tuple[Path, Path]) -> None:
    key, allowed = signer
    path = attested(store, "2026.11-aaaa")
    signing.sign(path, key)
    forged = json.loads((path / signing.STATEMENT).read_text()) | {"disk_sha256": "0" * 64}
    (path / signing.STATEMENT).write_text(json.dumps(forged, sort_keys=True) + "\n")
    with pytest.raises(SignatureError, match=r"does not match its signature by alice@ops"):
        signing.verify_local(path, allowed)


def test_unsigned_or_foreign_key_refused_before_any_upload(
    store: Path, clouds: dict[str, Cloud], production: NovaDouble,
    signer: tuple[Path, Path], tmp_path: Path,
) -> None:  # fmt: skip
    _, allowed = signer
    path = attested(store, "2026.11-aaaa")
    target = target_of(clouds["production"], production, store)
    rules = gates.Gates(allowed_signers=allowed)
    with pytest.raises(SignatureError, match=r"2026.11-aaaa: unsigned: .*aurora-image sign"):
        gates.guarded_promote(target, "2026.11-aaaa", rules, never)
    mallory, _ = keypair(tmp_path / "mallory", "mallory@evil")
    signing.sign(path, mallory)
    with pytest.raises(SignatureError, match=r"signed by a key that is not in .*allowed_signers"):
        gates.guarded_promote(target, "2026.11-aaaa", rules, never)
    assert clouds["production"].images(MARK) == [] and untouched(production)
    assert not (path / "aurora.qcow2").exists()  # not even converted


def test_production_without_allowed_signers_refuses(
    store: Path, clouds: dict[str, Cloud], production: NovaDouble
) -> None:
    attested(store, "2026.11-aaaa")
    with pytest.raises(SignatureError, match=r"production target takes only signed images"):
        gates.guarded_promote(target_of(clouds["production"], production, store), "2026.11-aaaa",
                              gates.Gates(role="production"), never)  # fmt: skip
    assert untouched(production)


def test_signing_key_never_from_the_repository(tmp_path: Path) -> None:
    from builder.image.inputs import REPO

    with pytest.raises(SignatureError, match="inside the repository"):
        signing.signing_key(REPO / "pyproject.toml")
    with pytest.raises(SignatureError, match="AURORA_SIGNING_KEY"):
        signing.signing_key(None, env={})
    key = tmp_path / "k"
    key.write_text("x")
    assert signing.signing_key(None, env={"AURORA_SIGNING_KEY": str(key)}) == key


def test_signature_travels_with_the_glance_image_for_rollback(
    store: Path, clouds: dict[str, Cloud], production: NovaDouble, signer: tuple[Path, Path]
) -> None:
    key, allowed = signer
    cloud = clouds["production"]
    path = attested(store, "2026.11-aaaa")
    signing.sign(path, key)
    image = ensure_upload(cloud, path).image
    cloud.set_properties(image.id, **signing.glance_properties(path))
    stored = cloud.image(image.id)  # real Glance: every value within its 255 characters
    assert signing.verify_glance(stored.name, stored.properties, allowed).signer == "alice@ops"
    # Someone edits the disk digest in Glance: the rollback refuses before rebuilding.
    cloud.set_properties(image.id, aurora_image_sha256="f" * 64)
    rules = gates.Gates(allowed_signers=allowed)
    record(cloud, image.id, production.server.name, "promote", "live")
    with pytest.raises(SignatureError, match=r"Glance's disk_sha256 differ from what alice@ops"):
        gates.guarded_rollback(target_of(cloud, production, store), "2026.11-aaaa", rules, never)
    assert untouched(production)


# -- 2. promotion policy ------------------------------------------------------------------


def live_on(cloud: Cloud, nova: NovaDouble, image_id: str, *, hours_ago: float) -> None:
    """The image went live on the double's server `hours_ago` (history in Glance)."""
    record(cloud, image_id, nova.server.name, "promote", "live")
    stamp = (datetime.now(UTC) - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cloud.set_properties(image_id, aurora_live_at=stamp)
    nova.server.image_id = image_id


def test_production_refuses_a_tag_staging_has_not_soaked(
    store: Path, clouds: dict[str, Cloud], staging: NovaDouble, production: NovaDouble,
    signer: tuple[Path, Path],
) -> None:  # fmt: skip
    key, allowed = signer
    prod = attested(store, "2026.11-pppp")
    signing.sign(prod, key)
    staged = ensure_upload(clouds["staging"], attested(store, "2026.11-ssss", disk=b"stag")).image
    clouds["staging"].set_properties(staged.id, **{BASE_TAG: "2026.11-pppp"})
    live_on(clouds["staging"], staging, staged.id, hours_ago=2)
    stagings = [StagingServer("staging", clouds["staging"], staging.server.name)]
    rules = gates.Gates(role="production", allowed_signers=allowed, stagings=stagings)
    target = target_of(clouds["production"], production, store)
    with pytest.raises(PolicyRefused) as caught:
        gates.guarded_promote(target, "2026.11-pppp", rules, never)
    text = str(caught.value)
    assert "\n" not in text
    assert "live and healthy on staging for 24 h" in text
    assert "staging runs it as aurora-2026.11-ssss, healthy, for 2.0 h" in text
    assert untouched(production)
    assert "aurora_lease_holder" not in production.server.metadata

    # A day later it counts; a failed soak on staging never does.
    live_on(clouds["staging"], staging, staged.id, hours_ago=25)
    found = check_production("2026.11-pppp", stagings, 24 * 3600)
    assert found.image.id == staged.id and found.hours >= 25
    clouds["staging"].set_properties(staged.id, aurora_soak_verdict="failed")
    with pytest.raises(PolicyRefused, match=r"not healthy, for 25.0 h"):
        check_production("2026.11-pppp", stagings, 24 * 3600)


def test_force_with_reason_overrides_and_is_recorded(
    store: Path, clouds: dict[str, Cloud], production: NovaDouble, signer: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    key, allowed = signer
    path = attested(store, "2026.11-pppp")
    signing.sign(path, key)
    cloud = clouds["production"]
    target = target_of(cloud, production, store)
    with pytest.raises(PolicyRefused, match="--force needs --reason"):
        gates.guarded_promote(target, "2026.11-pppp", gates.Gates(
            role="production", allowed_signers=allowed, force_reason=" "), never)  # fmt: skip

    def upload_only() -> str:
        # The release's own work is builder.release.promote's; the gate records around it.
        meta = production.server.metadata
        assert meta["aurora_lease_action"] == "promote 2026.11-pppp"
        ensure_upload(cloud, path)
        return "done"

    rules = gates.Gates(role="production", allowed_signers=allowed,
                        force_reason="CVE fix, staging is down")  # fmt: skip
    assert gates.guarded_promote(target, "2026.11-pppp", rules, upload_only) == "done"  # type: ignore[comparison-overlap]
    image = next(i for i in cloud.images(MARK) + cloud.images(MARK, hidden=True))
    props = image.properties
    assert props["aurora_forced_reason"] == "CVE fix, staging is down"
    assert props["aurora_forced_by"] == "alice@ops"
    assert props["aurora_signed_by"] == "alice@ops"
    assert "policy overridden by alice@ops" in capsys.readouterr().err
    assert not any(k.startswith("aurora_lease_") for k in production.server.metadata)


# -- superseded images: hidden, never deleted --------------------------------------------


def test_superseded_images_are_hidden_not_deleted(
    store: Path, clouds: dict[str, Cloud], production: NovaDouble
) -> None:
    cloud = clouds["production"]
    ids = {}
    for n, tag in enumerate(("2026.11-aaaa", "2026.11-bbbb", "2026.11-cccc")):
        ids[tag] = ensure_upload(cloud, attested(store, tag, disk=bytes([65 + n]) * 4)).image.id
        live_on(cloud, production, ids[tag], hours_ago=3 - n)
    hidden = gates.hide_superseded(cloud, [production.server.name])
    assert hidden == ["aurora-2026.11-aaaa"]
    visible = {i.name for i in cloud.images(MARK)}
    assert visible == {"aurora-2026.11-bbbb", "aurora-2026.11-cccc"}  # live, and rollback's
    assert {i.name for i in cloud.images(MARK, hidden=True)} == {"aurora-2026.11-aaaa"}
    # Back on A: A shows again, C is rollback's target, B is superseded now.
    production.server.image_id = ids["2026.11-aaaa"]
    assert gates.hide_superseded(cloud, [production.server.name]) == ["aurora-2026.11-bbbb"]
    assert {i.name for i in cloud.images(MARK)} == {"aurora-2026.11-aaaa", "aurora-2026.11-cccc"}


# -- 6. change categories need approval for production -------------------------------


def test_production_needs_approval_for_marked_categories_and_records_who(
    store: Path, clouds: dict[str, Cloud], production: NovaDouble, signer: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from builder.release import categories

    key, allowed = signer
    cloud = clouds["production"]
    old = ensure_upload(cloud, attested(store, "2026.11-oooo", disk=b"old!")).image
    before = dict.fromkeys(categories.CATEGORIES, "0" * 10)
    cloud.set_properties(old.id, aurora_categories=categories.encode(before))
    live_on(cloud, production, old.id, hours_ago=1)
    path = attested(store, "2026.11-pppp")
    signing.sign(path, key)
    after = before | {"firewall": "1" * 10, "app": "2" * 10}
    rules = gates.Gates(
        role="production", allowed_signers=allowed, force_reason="staging soak tested elsewhere",
        needs_approval=("firewall", "credentials"), fingerprint=lambda d: after,
    )  # fmt: skip
    target = target_of(cloud, production, store)
    with pytest.raises(PolicyRefused) as caught:
        gates.guarded_promote(target, "2026.11-pppp", rules, never)
    text = str(caught.value)
    assert "changes firewall, app against aurora-2026.11-oooo" in text
    assert "needs approval for firewall" in text and text.endswith("--approve firewall")
    assert untouched(production)

    monkeypatch.setenv("AURORA_OPERATOR", "bob@ops")
    approved = gates.Gates(**{**rules.__dict__, "approvals": ("firewall",)})
    gates.guarded_promote(target, "2026.11-pppp", approved, lambda: ensure_upload(cloud, path))
    uploaded = gates._image_for(cloud, "2026.11-pppp")
    assert uploaded is not None and not uploaded.hidden  # never live: not superseded
    props = uploaded.properties
    assert json.loads(props["aurora_approved"]) == {"firewall": "bob@ops"}
    assert categories.decode(props["aurora_categories"]) == after


# -- 3 and 4. soak, automatic rollback, evidence -----------------------------------------


def stub_prober(fail_image: str, after: int) -> tuple[list[str], object]:
    """A probe that passes, except for `fail_image` from its `after`-th probe on."""
    from builder.host.probe import Check, ProbeReport

    seen: list[str] = []

    def prober(target: Target, server: object, image: GlanceImage) -> ProbeReport:
        seen.append(image.name)
        bad = image.name == fail_image and seen.count(image.name) >= after
        check = Check("stub", not bad, "restart loop: aurora-dashboard.service (3 restarts)"
                      if bad else "healthy")  # fmt: skip
        return ProbeReport("stub", (check,), 0.1)

    return seen, prober


class VirtualClock:
    """The soak's clock for tests: time moves only when the soak sleeps, so the
    number of probes in a window is exact however loaded the machine is."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def virtual_soak(window: float, interval: float) -> gates.Gates:
    clock = VirtualClock()
    return gates.Gates(soak_window=window, soak_interval=interval, soak_clock=clock,
                       soak_sleep=clock.sleep)  # fmt: skip


def test_soak_failure_rolls_back_by_itself_and_keeps_evidence(
    store: Path, clouds: dict[str, Cloud], production: NovaDouble,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from builder.release.evidence import MARK as EVIDENCE
    from builder.release.evidence import unpack
    from builder.vm.process import free_port

    cloud = clouds["production"]
    old = ensure_upload(cloud, attested(store, "2026.11-oooo", disk=b"old!")).image
    live_on(cloud, production, old.id, hours_ago=30)
    attested(store, "2026.11-nnnn")
    seen, prober = stub_prober("aurora-2026.11-nnnn", after=2)
    target = Target(
        cloud=cloud, server=production.server.name, hostname="data.gamb2le.co.uk", store=store,
        address="127.0.0.1", ssh_port=free_port(), rebuild_timeout=120,
        prober=prober, before_rollback=gates.keep_evidence,  # type: ignore[arg-type]
    )  # fmt: skip
    rules = virtual_soak(3.0, 0.5)
    run = lambda: execute(target, plan_promote(target, "2026.11-nnnn"))  # noqa: E731
    with pytest.raises(ReleaseFailed) as caught:
        gates.guarded_promote(target, "2026.11-nnnn", rules, run)
    new = gates._image_for(cloud, "2026.11-nnnn")
    assert new is not None
    assert production.rebuilds == [new.id, old.id]  # rebuilt to it, then back by itself
    assert production.server.image_id == old.id and production.server.status == "ACTIVE"
    assert seen == ["aurora-2026.11-nnnn", "aurora-2026.11-nnnn", "aurora-2026.11-oooo"]
    message = str(caught.value)
    assert "soak failed after" in message and "restart loop" in message
    assert "rolled back automatically" in message and "runs aurora-2026.11-oooo again" in message
    props = cloud.image(new.id).properties
    assert (
        props["aurora_soak_verdict"] == "failed" and props["aurora_last_outcome"] == "soak-failed"
    )
    assert props["aurora_live_server"] == ""  # never again rollback's target
    history = json.loads(cloud.image(old.id).properties["aurora_history"])
    assert history[-1][2:4] == ["auto-rollback", "live"]
    # Evidence: kept before the rollback rebuild, in Glance (hidden) and locally.
    kept = [i for i in cloud.images(EVIDENCE, hidden=True) if i.prop("aurora_tag") == new.prop(
        "aurora_tag")]  # fmt: skip
    assert [i.name for i in kept] == [props["aurora_evidence_image"]]
    data = cloud._conn.image.download_image(kept[0].id).content
    files = unpack(data)
    assert "no-boot mode: root disk of image " + new.id in files["console.txt"]
    assert "journal not read" in files["journal.txt"]  # no guest: said, not hidden
    assert "restart loop" in files["reason.txt"]
    assert not any(k.startswith("aurora_lease_") for k in production.server.metadata)


def test_a_soak_that_passes_records_its_verdict(
    store: Path, clouds: dict[str, Cloud], production: NovaDouble
) -> None:
    cloud = clouds["production"]
    old = ensure_upload(cloud, attested(store, "2026.11-oooo", disk=b"old!")).image
    live_on(cloud, production, old.id, hours_ago=30)
    attested(store, "2026.11-nnnn")
    seen, prober = stub_prober("none", after=1)
    from builder.vm.process import free_port

    target = Target(cloud=cloud, server=production.server.name, hostname="h", store=store,
                    address="127.0.0.1", ssh_port=free_port(), prober=prober)  # type: ignore[arg-type]  # fmt: skip
    run = lambda: execute(target, plan_promote(target, "2026.11-nnnn"))  # noqa: E731
    outcome = gates.guarded_promote(target, "2026.11-nnnn", virtual_soak(1.2, 0.5), run)
    # The promote's own probe, then the soak's at 0.5, 1.0 and 1.2 s.
    assert outcome.final_image == "aurora-2026.11-nnnn" and len(seen) == 4
    props = cloud.image(production.server.image_id).properties
    assert props["aurora_soak_verdict"] == "passed"
    assert props["aurora_soak_detail"].startswith("soak passed:")
    rows = {r["tag"]: r for r in releases(cloud, production.server.name, store).to_json()[
        "releases"]}  # fmt: skip
    assert rows["2026.11-nnnn"]["soak"] == "passed" and rows["2026.11-nnnn"]["live"]


def test_a_release_tells_the_operator_only_through_target_note(
    store: Path, clouds: dict[str, Cloud], production: NovaDouble,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The release prints nothing itself: what it decided goes to Target.note (the CLI
    passes its stderr writer), here that a ready upload of this disk is reused."""
    from builder.vm.process import free_port

    cloud = clouds["production"]
    image = ensure_upload(cloud, attested(store, "2026.11-nnnn")).image
    _, prober = stub_prober("none", after=1)
    notes: list[str] = []
    target = Target(cloud=cloud, server=production.server.name, hostname="h", store=store,
                    address="127.0.0.1", ssh_port=free_port(), prober=prober, note=notes.append)  # type: ignore[arg-type]  # fmt: skip
    capsys.readouterr()
    outcome = execute(target, plan_promote(target, "2026.11-nnnn"))
    assert outcome.upload_reused is True and outcome.final_image == "aurora-2026.11-nnnn"
    assert notes == [f"aurora-2026.11-nnnn: already in Glance ({image.id}), reused"]
    captured = capsys.readouterr()
    assert "reused" not in captured.out + captured.err


# -- through the CLI: a spec with two targets, two clouds ---------------------------------


@pytest.fixture
def two_target_spec(
    tmp_path: Path, glance: GlanceServer, staging: NovaDouble, production: NovaDouble,
    signer: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
) -> Path:  # fmt: skip
    """hosts/aurora.yml with staging and production targets, each on its own cloud."""
    from builder.image.inputs import REPO

    clouds = tmp_path / "clouds.yaml"
    entry = {"auth_type": "none", "image_endpoint_override": glance.endpoint}
    clouds.write_text(json.dumps({"clouds": {
        "unit-staging": entry | {"compute_endpoint_override": staging.endpoint},
        "unit-production": entry | {"compute_endpoint_override": production.endpoint},
    }}))  # fmt: skip
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    for name in ("OS_CLOUD", "OS_AUTH_URL"):
        monkeypatch.delenv(name, raising=False)
    spec = tmp_path / "hosts" / "two-targets.yml"
    spec.parent.mkdir()
    spec.write_text(
        f"base: {REPO / 'hosts' / 'aurora.yml'}\n"
        "deploy:\n"
        f"  allowed_signers: {signer[1]}\n"
        "  targets:\n"
        f"    staging: {{server: {staging.server.name}, role: staging, cloud: unit-staging}}\n"
        f"    production: {{server: {production.server.name}, role: production, "
        "cloud: unit-production}\n"
    )
    return spec


def test_cli_production_promote_refused_for_lack_of_soak(
    store: Path, clouds: dict[str, Cloud], staging: NovaDouble, production: NovaDouble,
    signer: tuple[Path, Path], two_target_spec: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    path = attested(store, "2026.11-pppp")
    signing.sign(path, signer[0])
    staged = ensure_upload(clouds["staging"], attested(store, "2026.11-ssss", disk=b"stag")).image
    clouds["staging"].set_properties(staged.id, **{BASE_TAG: "2026.11-pppp"})
    live_on(clouds["staging"], staging, staged.id, hours_ago=3)
    capsys.readouterr()
    code = main(["promote", "2026.11-pppp", "--target", "production", "--spec",
                 str(two_target_spec)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == PolicyRefused.exit_code == 6, err
    errors = [line for line in err.splitlines() if line.startswith("aurora-image: ")]
    assert len(errors) == 1, err
    assert "production needs these inputs live and healthy on staging for 24 h" in errors[0]
    assert "staging runs it as aurora-2026.11-ssss, healthy, for 3.0 h" in errors[0]
    assert "signature of" not in err  # verified (signed by alice@ops), so nothing to warn
    assert untouched(production)
    assert [i.name for i in clouds["production"].images(MARK)] == ["aurora-2026.11-ssss"]


def test_cli_lease_conflict_names_the_holder_and_exits_5(
    store: Path, clouds: dict[str, Cloud], production: NovaDouble, signer: tuple[Path, Path],
    two_target_spec: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    path = attested(store, "2026.11-pppp")
    signing.sign(path, signer[0])
    cloud = clouds["production"]
    server = cloud.server(production.server.name)
    held = lease.new_lease("carol@ops", "rollback", 3600, datetime.now(UTC))
    cloud.set_server_metadata(server.id, **held.to_metadata())
    capsys.readouterr()
    code = main(["rollback", "2026.11-pppp", "--target", "production", "--spec",
                 str(two_target_spec)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1, err  # no such image in Glance: said before any lease is taken
    code = main(["promote", "2026.11-pppp", "--target", "production", "--force", "--reason",
                 "hotfix", "--spec", str(two_target_spec)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == lease.LeaseHeld.exit_code == 5, err
    line = next(x for x in err.splitlines() if x.startswith("aurora-image: "))
    assert f"leased by carol@ops for rollback since {held.taken.strftime(lease.STAMP)}" in line
    assert "--break-lease" in line
    assert untouched(production)
    assert production.server.metadata["aurora_lease_holder"] == "carol@ops"


def test_glance_prune_protects_every_targets_live_and_rollback_images(
    store: Path, clouds: dict[str, Cloud], staging: NovaDouble, production: NovaDouble
) -> None:
    """Staging and production share one Glance: pruning for production must not take
    staging's live image or its rollback target."""
    cloud = clouds["production"]
    ids = {}
    for n, tag in enumerate(("2026.11-s001", "2026.11-s002", "2026.11-p001", "2026.11-xxxx")):
        ids[tag] = ensure_upload(cloud, attested(store, tag, disk=bytes([70 + n]) * 4)).image.id
    live_on(clouds["staging"], staging, ids["2026.11-s001"], hours_ago=5)
    live_on(clouds["staging"], staging, ids["2026.11-s002"], hours_ago=1)
    live_on(cloud, production, ids["2026.11-p001"], hours_ago=2)
    others = [clouds["staging"].server(staging.server.name)]
    result = glance_prune(cloud, production.server.name, 0, others=others)
    assert result.removed == ["aurora-2026.11-xxxx"]
    assert result.protected == {
        "aurora-2026.11-p001": f"live on {production.server.name}",
        "aurora-2026.11-s002": f"live on {staging.server.name}",
        "aurora-2026.11-s001": f"live before the current image on {staging.server.name}",
    }
