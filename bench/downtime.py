"""Issue 14 goal 7, promotion downtime: how long the dashboard is gone when a
release rebuilds the server, measured through the real CLI against the release
suite's services (a real Glance, tests/release/glance.py, and the Nova double,
tests/release/nova.py, which powers the old VM off and really boots the new image
under UEFI on the same volumes and forwarded ports).

Three releases on one server: promote A (its first boot, for reference), promote
B (A -> B), then `rollback` (B -> A, the image live before). A watcher records
when Nova receives each rebuild request and polls the dashboard through nginx
(`builder.host.probe.fetch_dashboard`, what the release probe itself asks) twice
a second, each poll in its own thread so a poll hanging on a booting guest never
delays the next. Figures:

  promote_downtime_s   Nova's rebuild request -> B's first 200 through nginx
  rollback_downtime_s  `aurora-image rollback` started -> A's first 200 again
  *_outage_s           the old image's last 200 -> the new image's first
  *_phases_s           the rebuild request -> first 200 split: Nova's power_off,
                       fetch and spawn (to systemd's first console line), then
                       guest_to_dashboard (userspace until nginx serves the dashboard)
  *_command_s          the whole command (upload, rebuild, probe)

With the floor image (bench/floor) its qcow2 goes through the same Glance and
Nova double last, uploaded and rebuilt by the release adapter (builder.release.cloud;
it has no manifest for the CLI): rebuild request -> its sshd's banner is the
floor's `rebuild_to_ssh_s`, the peer of both downtimes.

The images are hard-linked into a store of the bench's own with a stand-in
attestation (the bench measures downtime, not health: the CLI's probe still
checks every release), so the project's store and its attestations stay as
they are. A benchmark: it asserts nothing; each figure has the CLI's outcomes
beside it (`*_outcomes`, `*_failed_checks`), and a release that does not go live
ends the sequence rather than timing the next step from the wrong image.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builder.host.probe import Endpoint, fetch_dashboard
from builder.image.store import ATTESTATION, write_attestation
from builder.release.cloud import Cloud
from builder.release.convert import QCOW, QCOW_META
from builder.spec.model import HostSpec
from tests.release.glance import GlanceServer
from tests.release.nova import NovaDouble

CLOUD = SERVER = "aurora-bench"
# The CLI of this checkout (as `python -m`, so a venv installed from another
# checkout does not lend its builder/).
REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "builder.cli.main"]
POLL_EVERY = 0.5  # seconds between dashboard polls
# Files a copy into the bench store must not share with the project's image: its
# attestation (the bench writes a stand-in) and the cached qcow2 (rewritten there).
NOT_LINKED = (ATTESTATION, QCOW, QCOW_META)


def stand_in(image_dir: Path, store: Path) -> Path:
    """`image_dir` hard-linked into `store` (once per tag) with a stand-in attestation."""
    copy = store / image_dir.name
    if not copy.is_dir():
        partial = store / f".{image_dir.name}.bench-partial"
        shutil.rmtree(partial, ignore_errors=True)  # a killed run's
        partial.mkdir(parents=True)
        for item in image_dir.iterdir():
            if item.is_file() and item.name not in NOT_LINKED:
                try:
                    os.link(item, partial / item.name)
                except OSError:  # another file system
                    shutil.copy2(item, partial / item.name)
        partial.rename(copy)
    attest_stand_in(copy)
    return copy


def attest_stand_in(image_dir: Path) -> None:
    """Mark a bench-store image promotable (never an image in the project's store)."""
    now = time.time()
    tests = {
        "bench/downtime.py::stand-in (the bench times releases; the probe checks them)": "passed"
    }
    write_attestation(image_dir, passed=True, tests=tests, started=now, finished=now)


@dataclass
class Poll:
    sent: float
    answered: float
    ok: bool
    detail: str


def ssh_banner(port: int) -> tuple[bool, str]:
    """Does an sshd answer on 127.0.0.1:`port` (its version banner)?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.settimeout(5)
            banner = conn.recv(64)
    except OSError as exc:
        return False, str(exc)
    return banner.startswith(b"SSH-"), banner.decode(errors="replace").strip()


@dataclass
class Watch:
    """Rebuild requests as Nova sees them, and the service as a user sees it
    (`check`: the dashboard through nginx, or the floor's sshd)."""

    nova: NovaDouble
    check: Callable[[], tuple[bool, str]]
    polls: list[Poll] = field(default_factory=list)
    rebuild_requests: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        seen = len(self.nova.rebuilds)
        next_poll = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            while len(self.nova.rebuilds) > seen:  # appended when Nova accepts the request
                self.rebuild_requests.append(now)
                seen += 1
            if now >= next_poll:
                threading.Thread(target=self._poll, daemon=True).start()
                next_poll += POLL_EVERY
            time.sleep(0.05)

    def _poll(self) -> None:
        sent = time.monotonic()
        ok, detail = self.check()
        self.polls.append(Poll(sent, time.monotonic(), ok, detail))

    @contextmanager
    def running(self) -> Iterator[Watch]:
        thread = threading.Thread(target=self.run, name="bench-watch", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    def back_up(self, since: float) -> tuple[float, float] | None:
        return outage(self.polls, since)


def outage(polls: list[Poll], since: float) -> tuple[float, float] | None:
    """(the old service's last answer, the new one's first) around the outage that
    began after `since`: the first failed poll sent since then, and the first good
    one sent after that failure (polls overlap: one sent earlier may still be the
    old service answering late). None if it did not go down and come back; the
    last answer is NaN when nothing answered before (a first boot)."""
    down = min((p.answered for p in polls if not p.ok and p.sent >= since), default=None)
    if down is None:
        return None
    up = min((p.answered for p in polls if p.ok and p.sent >= down), default=None)
    if up is None:
        return None
    last = max((p.answered for p in polls if p.ok and p.answered <= down), default=float("nan"))
    return last, up


def _cli(argv: list[str], env: dict[str, str], log: Path) -> tuple[int, Any, float]:
    """Run `aurora-image`; (exit status, its JSON or None, seconds). stderr goes to `log`."""
    start = time.monotonic()
    with log.open("a") as err:
        err.write(f"\n$ aurora-image {' '.join(argv)}\n")
        err.flush()
        done = subprocess.run(
            [*CLI, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
            check=False,
        )  # fmt: skip
    took = time.monotonic() - start
    with log.open("a") as record:
        record.write(f"exit {done.returncode} after {took:.1f} s; stdout:\n{done.stdout}\n")
    try:
        out = json.loads(done.stdout)
    except ValueError:
        out = None
    return done.returncode, out, took


def _env(work: Path, clouds: Path, store: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    return {
        **env,
        "OS_CLIENT_CONFIG_FILE": str(clouds),
        "OS_CLOUD": CLOUD,
        "XDG_STATE_HOME": str(work / "state"),
        "AURORA_OPERATOR": "bench@aurora",
        "AURORA_IMAGES": str(store),
    }


def measure(
    spec: HostSpec,
    image_a: Path,
    image_b: Path,
    work: Path,
    log: Path,
    floor_qcow: Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Promote A, promote B, roll back to A on a fresh Glance and Nova double under
    `work`, then rebuild to the floor's `floor_qcow` if given; (Aurora's figures,
    the floor's), named in the module docstring (seconds)."""
    key = work / "operator" / "id_ed25519"
    key.parent.mkdir(parents=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "aurora-bench", "-f", str(key)],
        check=True, stdin=subprocess.DEVNULL, capture_output=True,
    )  # fmt: skip
    glance = GlanceServer(work / "glance")
    glance.start()
    nova: NovaDouble | None = None
    try:
        nova = NovaDouble(
            work / "nova",
            glance_endpoint=glance.endpoint,
            name=SERVER,
            credentials={"ssh.authorized_keys.root": key.with_suffix(".pub").read_text()},
            ssh_key=key,
        )
        clouds = work / "clouds.yaml"
        cloud = {
            "auth_type": "none",
            "image_endpoint_override": glance.endpoint,
            "compute_endpoint_override": nova.endpoint,
        }
        clouds.write_text(yaml.safe_dump({"clouds": {CLOUD: cloud}}))
        env = _env(work, clouds, image_a.parent)
        target = [
            "--spec", str(spec.source.path),
            "--cloud", CLOUD, "--server", SERVER,
            *nova.probe_argv(key),
            "--json",
        ]  # fmt: skip
        endpoint = Endpoint("127.0.0.1", spec.hostname, nova.http_port, nova.https_port)
        with Watch(nova, lambda: fetch_dashboard(endpoint)).running() as watch:
            aurora = _releases(watch, nova, target, env, image_a, image_b, log)
        floor: dict[str, Any] = {}
        if floor_qcow is not None:
            floor = _floor(nova, clouds, floor_qcow)
        return aurora, floor
    finally:
        if nova is not None:
            nova.close()
        glance.stop()


def _floor(nova: NovaDouble, clouds: Path, qcow: Path) -> dict[str, Any]:
    """The floor on the same services: uploaded, the server rebuilt from it, timed
    from the rebuild request to its sshd's banner."""
    from openstack import connection
    from openstack.config import loader

    region = loader.OpenStackConfig(config_files=[str(clouds)]).get_one(CLOUD)
    cloud = Cloud(connection.Connection(config=region), CLOUD)
    image = cloud.create_image(
        "bench-floor", disk_format="qcow2", tags=["bench"], properties={"hw_firmware_type": "uefi"}
    )
    cloud.upload(image.id, qcow, lambda _: None)
    if cloud.wait_image(image.id, 600).status != "active":
        return {"rebuild_error": f"Glance did not take the floor's qcow2 {qcow}"}
    server = cloud.server(SERVER)
    with Watch(nova, lambda: ssh_banner(nova.ssh_port)).running() as watch:
        cloud.rebuild(server.id, image.id)
        rebuilt = cloud.wait_rebuilt(server.id, image.id, 900)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and rebuilt.status == "ACTIVE":
            if watch.rebuild_requests and watch.back_up(watch.rebuild_requests[0]):
                break
            time.sleep(1)
    figures: dict[str, Any] = {"rebuild_nova_phases_s": dict(nova.timings)}
    around = watch.back_up(watch.rebuild_requests[0]) if watch.rebuild_requests else None
    if rebuilt.status != "ACTIVE" or around is None:
        figures["rebuild_error"] = f"the floor's rebuild ended {rebuilt.status}, sshd {around}"
        return figures
    requested, up = watch.rebuild_requests[0], around[1]
    figures["rebuild_to_ssh_s"] = up - requested
    print(f"floor on the Nova double: rebuild request -> sshd {up - requested:.1f} s")
    return figures


def phases(rebuild_to_dashboard: float, nova: dict[str, float]) -> dict[str, float]:
    """Where a rebuild's gap went: Nova's phases (the old VM's power-off, the image's
    fetch, the spawn up to systemd's first line on the console) and the rest, the
    guest's userspace until the dashboard answers through nginx."""
    return {**nova, "guest_to_dashboard": rebuild_to_dashboard - sum(nova.values())}


def steps(image_a: Path, image_b: Path) -> tuple[tuple[str, list[str]], ...]:
    """The three releases, named, with the CLI's arguments. A promote goes on after it
    is live with a soak (deploy.soak_window, 30 min by default: the probe keeps
    watching and rolls back on a failure); the outage is over by then, so the bench
    skips it (`--soak 0`), else each promote holds the machine half an hour. The
    rollback names A, the image live before B, so the figure is for a known target."""
    no_soak = ["--soak", "0"]
    return (
        ("first_promote", ["promote", str(image_a), *no_soak]),
        ("promote", ["promote", str(image_b), *no_soak]),
        ("rollback", ["rollback", image_a.name]),
    )


def _releases(
    watch: Watch,
    nova: NovaDouble,
    target: list[str],
    env: dict[str, str],
    image_a: Path,
    image_b: Path,
    log: Path,
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name, argv in steps(image_a, image_b):
        asked = time.monotonic()
        requests = len(watch.rebuild_requests)
        code, out, took = _cli([*argv, *target], env, log)
        figures[f"{name}_command_s"] = took
        attempts = (out or {}).get("attempts") or [{}]
        outcomes = [a.get("outcome") for a in attempts]
        figures[f"{name}_outcomes"] = outcomes
        figures[f"{name}_nova_phases_s"] = dict(nova.timings)
        failed = [
            check
            for attempt in attempts
            for check in (attempt.get("probe") or {}).get("checks", [])
            if not check.get("ok")
        ]
        if failed:
            figures[f"{name}_failed_checks"] = failed
        went_live = code == 0 and outcomes == ["live"]
        # The dashboard's gap is timed whatever the probe said after it (a probe
        # failing later, e.g. its audit, does not make the outage shorter or longer);
        # the outcomes stand beside the figure, and a step that did not go live ends
        # the sequence (the next one would start from the wrong image).
        rebuilt = (
            watch.rebuild_requests[requests] if len(watch.rebuild_requests) > requests else None
        )
        around = watch.back_up(rebuilt) if rebuilt is not None else None
        if around is not None and rebuilt is not None:
            last_old, first_new = around
            if name == "first_promote":  # nothing answered before: a first boot, no outage
                figures["first_promote_to_dashboard_s"] = first_new - rebuilt
            else:
                start = rebuilt if name == "promote" else asked
                figures[f"{name}_downtime_s"] = first_new - start
                figures[f"{name}_rebuild_to_dashboard_s"] = first_new - rebuilt
                figures[f"{name}_outage_s"] = first_new - last_old
            figures[f"{name}_phases_s"] = phases(first_new - rebuilt, nova.timings)
            print(
                f"{name}: {argv[0]} took {took:.0f} s, outcomes {outcomes}; rebuild request -> "
                f"dashboard {first_new - rebuilt:.1f} s (Nova: "
                + ", ".join(f"{k} {v:.1f} s" for k, v in nova.timings.items())
                + ")"
            )
        if not went_live or around is None:
            why = "the dashboard did not go down and come back" if went_live else "not live"
            figures[f"{name}_error"] = f"{why}: exit {code}, outcomes {outcomes} (log {log})"
            print(f"{name}: {why}: exit {code}, outcomes {outcomes}; see {log}")
            break
    return figures
