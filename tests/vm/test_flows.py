"""The host's data flows end to end in the booted default image, with real peers.

Peers run on the build host (tests/peers.py): the instrument hosts of the spec's
streams (real sshd, rsync and find, the files laid out at the spec's paths), the
spec's three GWS transfer hosts sharing one group workspace (the first refuses
every login), and the session's SMTP sink. The guest gets the per-run keys and
the peers' host keys as production does, as credentials in its credential store
on /data (installed by aurora-credentials.service), and its routes to the
production addresses and names lead to the peers (tests/peers.py). Nothing else
in the image changes: the units and configs are the ones rendered from the
default spec, started as their timers start them (`systemctl start X.service`).

The timers are stopped while these tests run (so nothing runs behind their
back) and started again at the end; the conftest runs this module last.
Tests build on each other in file order (syncs, then pushes, then the checks
on them), as the host's own schedule does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from builder.host import health
from builder.host.probe import Endpoint, probe
from builder.image.store import read_manifest
from builder.render.engine import gws_unit, sync_unit
from builder.retry import retry
from builder.spec.model import GwsJob, HostSpec, Stream
from builder.vm.session import KeptVm
from tests.peers import (
    Peer,
    Peers,
    give_to,
    guest_redirect_script,
    guest_unredirect_script,
    start_peer,
)
from tests.sshd import _keygen
from tests.vm.conftest import BLANK_VOLUME, HOST_FROM_GUEST

NOW = datetime.now(UTC)
# Instrument files this old were there long before the first sync.
OLD = timedelta(hours=2)
CL61_KEY, JASMIN_KEY, KNOWN_HOSTS = "cl61.ssh_key", "jasmin.ssh_key", "ssh.known_hosts"


# -- helpers ---------------------------------------------------------------------


def sh(machine: KeptVm, command: str, timeout: float = 300) -> str:
    return machine.succeed(command, timeout=timeout)


@dataclass(frozen=True)
class Run:
    """One start of a unit: systemd's verdict and what the program printed."""

    unit: str
    result: str
    status: str
    lines: list[str]

    @property
    def ok(self) -> bool:
        return self.result == "success"

    def __str__(self) -> str:
        return f"{self.unit}: {self.result} (status {self.status})\n" + "\n".join(self.lines)


def start(machine: KeptVm, unit: str, timeout: float = 600) -> Run:
    """`systemctl start` a oneshot as its timer does; wait for it to finish."""
    machine.execute(f"systemctl reset-failed {unit} 2>/dev/null; systemctl start {unit}", timeout)
    show = sh(machine, f"systemctl show -p Result -p ExecMainStatus -p InvocationID {unit}")
    props = dict(line.partition("=")[::2] for line in show.splitlines())
    out = sh(machine, f"journalctl -o cat _SYSTEMD_INVOCATION_ID={props['InvocationID']}")
    return Run(unit, props["Result"], props["ExecMainStatus"], out.splitlines())


def glob_name(pattern: str, when: datetime, tag: str) -> str:
    """A file name matching a stream pattern (`?` runs become a date stamp of their length)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "?":
            j = i
            while j < len(pattern) and pattern[j] == "?":
                j += 1
            out.append(when.strftime("%Y%m%d%H%M%S")[: j - i].ljust(j - i, "0"))
            i = j
        elif pattern[i] == "*":
            out.append(f"{when:%Y%m%d_%H%M%S}_{tag}")
            i += 1
        else:
            out.append(pattern[i])
            i += 1
    return "".join(out)


def put(path: Path, data: bytes, when: datetime) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    stamp = when.timestamp()
    os.utime(path, (stamp, stamp))


def tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under root: relative path -> (size, mtime, sha256)."""
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): (
            p.stat().st_size,
            int(p.stat().st_mtime),
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in root.rglob("*")
        if p.is_file()
    }


def guest_files(machine: KeptVm, root: str) -> dict[str, str]:
    """Files under a guest directory: relative path -> "owner:group mode"."""
    out = machine.execute(f"cd {shlex.quote(root)} && find . -type f -printf '%P %u:%g %m\\n'")[1]
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines() if line}


# -- the instruments' files --------------------------------------------------------


@dataclass
class Instrument:
    """What one stream's source directory holds, and which of it must arrive."""

    stream: Stream
    peer: Peer
    wanted: set[str]  # names the first sync must pull
    unwanted: set[str]  # names it must leave on the source


def lay_out(stream: Stream, peer: Peer) -> Instrument:
    """Files on the instrument: matching ones, strangers, and (where the stream says
    so) files before its lookback window or stamped before its first stamp."""
    here = peer.local(stream.path)
    wanted, unwanted = set(), set()
    if stream.mode == "mirror":
        day = (NOW - OLD).strftime("%Y/%m/%d")
        stamp = f"{NOW - OLD:%Y%m%d_%H%M}"
        wanted = {
            f"FISH/{day}/HDR_{stamp}.jpg",
            f"FISH/{day}/HDR_{stamp}.mp4",
            f"PANO/{day}/HDR_{stamp}_PANO.jpg",
            f"PANO/{day}/HDR_{stamp}_PANO.mp4",
        }
        unwanted = {
            f"FISH/{day}/AUTO_{stamp}.jpg",
            f"FISH/{day}/LONG_{stamp}.jpg",
            f"FISH/{day}/SHORT_{stamp}.mp4",
            f"PANO/{day}/AUTO_{stamp}_PANO.jpg",
            f"FISH/{day}/AUTO_only_{stamp}.jpg",
        }
    else:
        for index, pattern in enumerate(stream.patterns):
            for n in (1, 2):
                when = NOW - OLD - timedelta(hours=n) - timedelta(days=n - 1)
                wanted.add(glob_name(pattern, when, f"{stream.name}{index}{n}"))
        unwanted.add(f"README-{stream.name}.txt")
        unwanted.add(f".{stream.name}.partial")
        if stream.lookback_days:
            before = NOW - timedelta(days=stream.lookback_days + 3)
            name = glob_name(stream.patterns[0], before, "old")
            put(here / name, b"before the lookback window\n", before)
            unwanted.add(name)
        if stream.min_stamp:
            name = glob_name(stream.patterns[0], datetime(2026, 5, 1, tzinfo=UTC), "early")
            put(here / name, b"stamped before min_stamp\n", NOW - OLD)
            unwanted.add(name)
    for name in sorted(wanted | unwanted):
        if not (here / name).exists():
            put(here / name, f"{stream.name} {name}\n".encode() * 3, NOW - OLD)
    return Instrument(stream, peer, wanted, unwanted)


# -- fixtures --------------------------------------------------------------------


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory, spec: HostSpec) -> Iterator[Peers]:
    """The instrument hosts and GWS transfer hosts of the spec, with fresh keys."""
    base = tmp_path_factory.mktemp("peers")
    found = Peers()
    found.keys = {CL61_KEY: base / "cl61_key", JASMIN_KEY: base / "jasmin_key"}
    cl61_pub = _keygen(found.keys[CL61_KEY], "aurora-test-cl61")
    jasmin_pub = _keygen(found.keys[JASMIN_KEY], "aurora-test-jasmin")
    by_host: dict[str, list[Stream]] = {}
    for stream in spec.source_sync.streams:
        by_host.setdefault(stream.host, []).append(stream)
    try:
        for host, streams in by_host.items():
            keyed = [s for s in streams if s.identity]
            dirs = {s.path: base / "instruments" / host / s.path.strip("/") for s in streams}
            found.instruments[host] = start_peer(
                host,
                base / "peer" / host,
                user=streams[0].user or spec.user.name,
                dirs=dirs,
                client_keys=cl61_pub + "\n" if keyed else None,
                keyless=not keyed,
            )
        gws = base / "gws"
        for index, host in enumerate(spec.gws.hosts):
            found.gws.append(
                start_peer(
                    host,
                    base / "peer" / host,
                    user=spec.gws.user,
                    dirs={spec.gws.root: gws},
                    client_keys=None if index == 0 else jasmin_pub + "\n",
                )
            )
        give_to(found.gws[0], gws)
        yield found
    finally:
        found.stop()


@pytest.fixture(scope="module")
def instruments(peers: Peers, spec: HostSpec) -> dict[str, Instrument]:
    laid = {}
    for stream in spec.source_sync.streams:
        peer = peers.instruments[stream.host]
        laid[stream.name] = lay_out(stream, peer)
    for peer in peers.instruments.values():
        for here in peer.dirs.values():
            give_to(peer, here)
    return laid


@pytest.fixture(scope="module")
def flows(booted: KeptVm, spec: HostSpec, peers: Peers) -> Iterator[KeptVm]:
    """The guest wired to the peers: timers stopped, keys and known_hosts in the
    credential store, production addresses routed to the peers, the tailnet joined."""
    machine = booted
    timers = sh(
        machine,
        "systemctl list-units --type=timer --state=active --plain --no-legend 'aurora-*' "
        "| awk '{print $1}'",
    ).split()
    sh(machine, "systemctl stop " + " ".join(timers))
    store = spec.credential_store
    values = {
        CL61_KEY: peers.keys[CL61_KEY].read_text(),
        JASMIN_KEY: peers.keys[JASMIN_KEY].read_text(),
        KNOWN_HOSTS: peers.known_hosts(),
    }
    for name, value in values.items():
        sh(machine, f"install -m 0600 /dev/stdin {store}/{name} <<'EOF'\n{value}EOF")
    sh(machine, "systemctl restart aurora-credentials.service")
    sh(machine, guest_redirect_script(peers, HOST_FROM_GUEST))
    joined = spec.source_sync.defaults.condition_path_exists
    made = bool(joined) and machine.execute(f"test -e {joined}")[0] != 0
    if made:
        # Its directory may be a link to the data volume (tailscale state kept there).
        sh(machine, f'mkdir -p "$(readlink -f $(dirname {joined}))" && touch {joined}')
    try:
        yield machine
    finally:
        machine.execute(guest_unredirect_script())
        if made:
            machine.execute(f"rm -f {joined}")
        machine.execute(f"cd {store} && rm -f {' '.join(values)}")
        machine.execute("systemctl restart aurora-credentials.service")
        machine.execute("systemctl reset-failed")
        machine.execute("systemctl start " + " ".join(timers))


def _push(spec: HostSpec, name: str) -> GwsJob:
    return next(j for j in spec.gws.jobs if j.name == name)


def gws_path(peers: Peers, spec: HostSpec, dest: str) -> Path:
    """The group workspace directory (on the build host) behind a GWS-relative path."""
    return peers.gws[0].local(f"{spec.gws.root}/{dest}".rstrip("/"))


# -- the probe: services judge the image, pipeline units the instruments ------------


def test_probe_passes_on_an_empty_host_with_the_failing_job_reported(
    booted: KeptVm, spec: HostSpec, image_dir: Path
) -> None:
    """The sample HATPRO append fails on the empty raw tree like production's; the
    probe excuses it when it failed the same way before the rebuild, and says so."""
    job = "aurora-hatpro-append.service"
    run = start(booted, job)
    assert (run.result, run.status) == ("exit-code", "1"), run
    assert "No datasets loaded; nothing to write" in run.lines, run
    remote = booted.remote()
    classes, failing = health.observe(remote)
    assert classes[job] == health.PIPELINE and classes["nginx.service"] == health.SERVICE
    assert failing[job] == "exit-code (status 1)"
    endpoint = Endpoint(
        "127.0.0.1", spec.hostname, booted.forwarded_port("http"), booted.forwarded_port("https")
    )
    manifest = read_manifest(image_dir)
    before = health.observe_before(remote)  # what release.py records before it rebuilds
    assert before.failing[job] == "exit-code (status 1)"
    report = probe(remote, endpoint, manifest, timeout=300, before=before)
    assert report.ok, report.summary()
    checks = {c.name: c.detail for c in report.checks}
    assert f"excused: {job} exit-code (status 1) (failed the same way" in checks["failed-units"]
    fresh = probe(remote, endpoint, manifest, timeout=300, before=health.Before())
    assert not fresh.ok and f"{job} exit-code (status 1) (ran without failing" in fresh.summary()


# -- source syncs -------------------------------------------------------------------


def test_syncs_pull_the_matching_files_with_owner_and_mode(
    flows: KeptVm, spec: HostSpec, instruments: dict[str, Instrument]
) -> None:
    user = spec.user.name
    for name, inst in instruments.items():
        if inst.stream.mode != "incremental":
            continue
        run = start(flows, f"{sync_unit(inst.stream)}.service")
        assert run.ok, run
        dest = f"{spec.storage.raw_root}/{inst.stream.dest}"
        found = guest_files(flows, dest)
        mine = {n: v for n, v in found.items() if n in inst.wanted | inst.unwanted}
        assert mine == {n: f"{user}:{user} 644" for n in inst.wanted}, name
    for dest in {i.stream.dest for i in instruments.values()}:
        mode = sh(flows, f"stat -c '%U:%G %a' {spec.storage.raw_root}/{dest}").strip()
        assert mode == f"{user}:{user} {spec.storage.mode.lstrip('0')}", dest


def test_wxcam_mirror_takes_hdr_only_and_leaves_the_rest_on_the_camera(
    flows: KeptVm, spec: HostSpec, instruments: dict[str, Instrument]
) -> None:
    inst = instruments["wxcam"]
    run = start(flows, f"{sync_unit(inst.stream)}.service")
    assert run.ok, run
    found = guest_files(flows, f"{spec.storage.raw_root}/{inst.stream.dest}")
    user = spec.user.name
    assert found == {n: f"{user}:{user} 644" for n in inst.wanted}
    here = inst.peer.local(inst.stream.path)
    assert all((here / n).exists() for n in inst.unwanted)
    # The mirror must not hand the camera directory's mode to the storage layout.
    mode = sh(flows, f"stat -c '%U:%G %a' {spec.storage.raw_root}/{inst.stream.dest}").strip()
    assert mode == f"{user}:{user} {spec.storage.mode.lstrip('0')}"


def test_state_advances_and_a_second_run_pulls_only_new_files(
    flows: KeptVm, spec: HostSpec, instruments: dict[str, Instrument]
) -> None:
    inst = instruments["cl61"]
    state = f"{spec.storage.state_dir}/{inst.stream.name}.last"
    first = int(sh(flows, f"cat {state}"))
    assert abs(first - NOW.timestamp()) < 3600
    fresh = glob_name(inst.stream.patterns[0], datetime.now(UTC), "fresh")
    put(inst.peer.local(inst.stream.path) / fresh, b"new CL61 file\n", datetime.now(UTC))
    give_to(inst.peer, inst.peer.local(inst.stream.path) / fresh)
    time.sleep(1)
    run = start(flows, f"{sync_unit(inst.stream)}.service")
    assert run.ok, run
    assert any(" files=1 " in line for line in run.lines), run
    second = int(sh(flows, f"cat {state}"))
    assert second > first
    dest = f"{spec.storage.raw_root}/{inst.stream.dest}"
    assert sh(flows, f"cat {dest}/{fresh}") == "new CL61 file\n"
    inst.wanted.add(fresh)


# -- GWS pushes ---------------------------------------------------------------------


def test_raw_push_sends_contents_and_fails_over_past_the_refusing_host(
    flows: KeptVm, spec: HostSpec, peers: Peers, instruments: dict[str, Instrument]
) -> None:
    job = _push(spec, "raw")
    run = start(flows, f"{gws_unit(job)}.service")
    assert run.ok, run
    gws = gws_path(peers, spec, job.dest)
    assert not (gws / "raw").exists(), "the raw push nested data/raw/raw"
    for inst in instruments.values():
        sent = {n for n in inst.wanted if (gws / inst.stream.dest / n).is_file()}
        assert sent == inst.wanted, inst.stream.name
        local = inst.peer.local(inst.stream.path)
        for name in inst.wanted:
            assert (gws / inst.stream.dest / name).read_bytes() == (local / name).read_bytes()
    refusing, first_ok, spare = peers.gws
    closed = f"Connection closed by authenticating user {spec.gws.user}"
    # sshd logs the refusal after the client has moved on: wait for it, bounded.
    retry(lambda: closed in refusing.log, timeout=10, interval=0.1, what="sshd's log line")
    assert f"Accepted publickey for {spec.gws.user}" in first_ok.log
    assert "Accepted" not in spare.log  # tried in order: the second host took the push
    logs = sh(flows, f"ls {spec.gws.log_dir}").split()
    assert any(n.startswith(f"{job.name}-") for n in logs), logs


def _products(flows: KeptVm, spec: HostSpec) -> dict[str, str]:
    """Products as the jobs leave them (made as the service user)."""
    root = spec.storage.product_root
    made = {
        "cl61/gamb2le_depolarisation_lidar_ceilometer_aurora.zarr/.zattrs": '{"v": 1}\n',
        "quicklooks/ceilometer/latest.png": "png bytes\n",
        "ops_monitor/health/report-1.json": '{"ok": true}\n',
        "ops_monitor/health/report-2.json": '{"ok": false}\n',
        "ops_monitor/health/report-3.json": '{"ok": true}\n',
        "wxcam/daily_videos/2026-11-28.mp4": "mp4 bytes\n",
        "wxcam/wxcam_catalog.sqlite": "sqlite bytes\n",
    }
    for rel, text in made.items():
        path = shlex.quote(f"{root}/{rel}")
        sh(
            flows,
            f'runuser -u {spec.user.name} -- sh -c \'mkdir -p "$(dirname {path})" && '
            f"cat > {path}' <<'EOF'\n{text}EOF",
        )
    return made


def test_products_push_leaves_wxcam_to_its_own_job(
    flows: KeptVm, spec: HostSpec, peers: Peers
) -> None:
    made = _products(flows, spec)
    products, wxcam = _push(spec, "products"), _push(spec, "products-wxcam")
    run = start(flows, f"{gws_unit(products)}.service")
    assert run.ok, run
    gws = gws_path(peers, spec, products.dest)
    assert not (gws / "products").exists(), "the products push nested data/products/products"
    assert not (gws / "wxcam").exists(), "wxcam went up with the products"
    for rel, text in made.items():
        if not rel.startswith("wxcam/"):
            assert (gws / rel).read_text() == text, rel
    run = start(flows, f"{gws_unit(wxcam)}.service")
    assert run.ok, run
    gws_wxcam = gws_path(peers, spec, wxcam.dest)
    assert not (gws_wxcam / "wxcam").exists(), "the wxcam push nested wxcam/wxcam"
    for rel, text in made.items():
        if rel.startswith("wxcam/"):
            assert (gws_wxcam / rel.removeprefix("wxcam/")).read_text() == text, rel


def test_mirror_verify_finds_source_local_and_gws_agreeing(
    flows: KeptVm, spec: HostSpec, instruments: dict[str, Instrument]
) -> None:
    """Every pulled file is listed on all three copies with one size; what the syncs
    left on the source on purpose (before the lookback, stamped too early) shows as
    missing locally, so nothing of it would be called safe to prune."""
    run = start(flows, "aurora-mirror-verify.service")
    assert run.ok, run
    latest = f"{spec.mirror_verify.manifest_root}/latest"
    summary = json.loads(sh(flows, f"cat {latest}/summary.json"))["streams"]
    for inst in instruments.values():
        name = inst.stream.name
        if inst.stream.mode != "incremental":
            continue
        copies = {}
        for copy in ("source", "local", "gws"):
            data = json.loads(sh(flows, f"cat {latest}/{name}.{copy}.json"))
            assert "error" not in data, data
            copies[copy] = {n: e["size"] for n, e in data["files"].items()}
        assert set(copies["local"]) == set(copies["gws"]) == inst.wanted, name
        assert {n: copies["source"][n] for n in inst.wanted} == copies["local"] == copies["gws"]
        held_back = set(copies["source"]) - inst.wanted
        assert held_back <= inst.unwanted, name
        stream = summary[name]
        assert stream["errors"] == {} and stream["mismatched"] == [], stream
        assert set(stream["missing_on_gws"]) == set(stream["missing_locally"]) == held_back
        assert not held_back & set(stream["safe_to_prune"]), stream


def test_manifests_push_sends_the_finished_runs(
    flows: KeptVm, spec: HostSpec, peers: Peers
) -> None:
    job = _push(spec, "manifests")
    run = start(flows, f"{gws_unit(job)}.service")
    assert run.ok, run
    gws = gws_path(peers, spec, job.dest)
    runs = [p for p in gws.iterdir() if p.is_dir() and p.name[:1].isdigit()]
    assert runs and all((r / "summary.json").is_file() for r in runs)
    assert not list(gws.glob(".tmp-*"))
    assert not (gws / "mirror_manifests").exists()


# -- alert mail ---------------------------------------------------------------------


def test_alert_mail_reaches_the_sink_from_and_to_the_env_files_addresses(
    flows: KeptVm, spec: HostSpec, mailbox
) -> None:
    box, _ = mailbox
    env = dict(
        line.split("=", 1)
        for line in sh(flows, "cat /etc/aurora-dashboard.env").splitlines()
        if "=" in line and not line.startswith("#")
    )
    recipients = env["OPS_ALERT_RECIPIENTS"].replace(",", " ").split()
    sender = env["OPS_ALERT_FROM"]
    snapshot = f"{spec.storage.raw_root}/ops_monitor/latest.json"
    alert = {"alerts": [{"id": "cl61-stale", "message": "no CL61 file for 3 h"}]}
    sh(
        flows,
        f"runuser -u {spec.user.name} -- sh -c 'cat > {snapshot}' <<'EOF'\n"
        f"{json.dumps(alert)}\nEOF",
    )
    seen = len(box.messages)
    run = start(flows, "aurora-ops-monitor-alerts.service")
    assert run.ok, run
    deadline = time.monotonic() + 60
    while len(box.messages) == seen and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(box.messages) > seen, "no alert reached the SMTP sink"
    mail = box.messages[-1]
    assert sorted(mail.rcpt_tos) == sorted(recipients)
    assert mail.mail_from == sender
    assert b"cl61-stale" in mail.content
    assert f"From: {sender}".encode() in mail.content


# -- backups are never wiped by accident -------------------------------------------


def test_a_blank_volume_over_data_is_refused_by_every_push_and_the_gws_kept(
    flows: KeptVm, spec: HostSpec, peers: Peers
) -> None:
    """The "rebuild from nothing" mistake: a new empty volume mounted at /data, the
    storage layout made on it, every push started: nothing on the GWS changes."""
    gws_root = peers.gws[0].local(spec.gws.root)
    settled = start(flows, f"{gws_unit(_push(spec, 'raw'))}.service")  # what is new in raw
    assert settled.ok, settled
    before = tree(gws_root)
    assert before
    data = next(m for m in spec.mounts if m.where == "/data")
    sh(flows, f"mount LABEL={BLANK_VOLUME} /data")
    try:
        sh(flows, f"systemctl restart aurora-storage@{data.unit_part}.service")
        runs = {job.name: start(flows, f"{gws_unit(job)}.service") for job in spec.gws.jobs}
    finally:
        flows.execute("umount /data || umount -l /data")
    on_data = {j.name for j in spec.gws.jobs if j.source.startswith("/data/")}
    assert on_data == {"products", "products-wxcam", "manifests"}
    for name, run in runs.items():
        if name not in on_data:
            assert run.ok, run  # /project was not swapped: the raw push goes on
            continue
        assert (run.result, run.status) == ("exit-code", "3"), run
        fixes = [line for line in run.lines if "fix:" in line]
        assert len(fixes) == 1 and "refused" in fixes[0], run
    assert tree(gws_root) == before


def test_a_legitimate_deletion_propagates_into_the_backup_directory(
    flows: KeptVm, spec: HostSpec, peers: Peers
) -> None:
    job = _push(spec, "products")
    gone = ["ops_monitor/health/report-1.json", "ops_monitor/health/report-2.json"]
    gws = gws_path(peers, spec, job.dest)
    kept = {rel: (gws / rel).read_bytes() for rel in gone}
    root = spec.storage.product_root
    sh(flows, "rm " + " ".join(shlex.quote(f"{root}/{rel}") for rel in gone))
    run = start(flows, f"{gws_unit(job)}.service")
    assert run.ok, run
    assert not any((gws / rel).exists() for rel in gone)
    assert (gws / "ops_monitor/health/report-3.json").is_file()
    backups = peers.gws[0].local(f"{spec.gws.root}/{spec.gws.backup_dir}/{job.name}")
    dated = [d for d in backups.iterdir() if (d / gone[0]).is_file()]
    assert len(dated) == 1, sorted(backups.rglob("*"))
    for rel, data in kept.items():
        assert (dated[0] / rel).read_bytes() == data, rel
