"""aurora-gws-push against three real sshd endpoints on loopback.

Every "transfer host" is its own throwaway sshd on its own port (the program's
``host:port`` form of a ``hosts`` entry), so each run exercises the real ssh
preflight, the real ``rsync -aH --partial --delete-delay --delay-updates`` and
the failover between hosts exactly as on the image. The "broken" endpoint lets
ssh in and runs ``mkdir -p`` but refuses to start rsync (as a host with no
rsync, or a full quota, would), so its failure is a real rsync failure.

Each job's config is the one the renderer writes for the default spec
(hosts/aurora.yml), with its absolute paths moved below the test's directory
(``/data/aurora/products`` -> ``<tmp>/local/data/aurora/products``, in the
form rendered: no trailing slash) and its hosts pointed at the endpoints.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest

from builder.render.configs import gws_config
from builder.render.names import VOLUME_MARKER
from builder.spec.model import load_spec
from tests import sshd
from tests.paths import REPO_ROOT
from tests.programs import ConfiguredRun, drop, load_program, set_key, set_ssh
from tests.stall import stalling_proxy

ROOT = REPO_ROOT
PROGRAM = ROOT / "mkosi.extra/usr/lib/aurora/aurora-gws-push"
SPEC = ROOT / "hosts" / "aurora.yml"
RECORD = ".aurora-push-volume"
STAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d{6}Z")
LOG_LINE_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \S")
# What the broken endpoint runs instead of any command starting with rsync: the
# remote side dies before the protocol starts, which local rsync reports as 12.
REFUSE_RSYNC = """\
#!/bin/sh
case "$SSH_ORIGINAL_COMMAND" in
  rsync*) echo "test endpoint: rsync refused" >&2; exit 1 ;;
esac
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
"""


@pytest.fixture(autouse=True, scope="module")
def _tools() -> None:
    """`make setup` installs these; a missing one is a failure, not a skip."""
    assert not sshd.missing_tools(), f"needs {', '.join(sshd.missing_tools())}"


@dataclass
class Endpoints:
    """Three sshd servers sharing one client key and one known_hosts file."""

    servers: list[sshd.SshServer]
    identity: Path
    known_hosts: Path

    @property
    def good(self) -> sshd.SshServer:
        return self.servers[0]

    @property
    def broken(self) -> sshd.SshServer:
        return self.servers[1]

    @property
    def spare(self) -> sshd.SshServer:
        return self.servers[2]

    def logins(self, server: sshd.SshServer) -> int:
        return server.log.count("Accepted publickey")


def entry(server: sshd.SshServer) -> str:
    return f"{server.host}:{server.port}"


def dead_entry() -> str:
    """A loopback port nothing listens on: the connection is refused."""
    return f"{sshd.HOST}:{sshd.free_port()}"


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    base = tmp_path_factory.mktemp("gws-sshd")
    with sshd.running_sshd(base, count=3) as servers:
        # The program takes one identity and one known_hosts file for all hosts,
        # as production does: authorise server 0's client key everywhere.
        key_line = (servers[0].workdir / "authorized_keys").read_text()
        wrapper = base / "refuse-rsync"
        wrapper.write_text(REFUSE_RSYNC)
        wrapper.chmod(0o755)
        (servers[1].workdir / "authorized_keys").write_text(f'command="{wrapper}" {key_line}')
        (servers[2].workdir / "authorized_keys").write_text(key_line)
        known_hosts = base / "known_hosts"
        known_hosts.write_text("".join(s.known_hosts.read_text() for s in servers))
        yield Endpoints(servers, servers[0].client_key, known_hosts)


@dataclass
class Job(ConfiguredRun):
    """One job's config dir, local source tree, remote destination and run logs."""

    PROGRAM: ClassVar[Path] = PROGRAM

    name: str
    config_dir: Path
    source: Path
    dest: Path
    log_dir: Path
    lock: Path
    config: dict[str, Any]
    marker: Path
    backups: Path

    def put(self, name: str, content: str | None = None) -> Path:
        path = self.source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if content is not None else f"data of {name}\n")
        return path

    def new_volume(self) -> str:
        """Replace the source volume's marker as a fresh volume would have it; its id."""
        self.marker.unlink(missing_ok=True)
        return make_marker(self.marker.parent)

    def record(self) -> str | None:
        path = self.dest / RECORD
        return path.read_text().strip() if path.exists() else None

    def backup_runs(self) -> list[Path]:
        return sorted(self.backups.iterdir()) if self.backups.exists() else []

    def logs(self) -> list[Path]:
        return sorted(self.log_dir.glob("*.log")) if self.log_dir.exists() else []

    def log_lines(self) -> list[str]:
        """The single run log's lines; every one must carry a timestamp."""
        logs = self.logs()
        assert len(logs) == 1, logs
        assert re.fullmatch(rf"{re.escape(self.name)}-\d{{8}}T\d{{6}}Z\.log", logs[0].name)
        lines = logs[0].read_text().splitlines()
        assert all(LOG_LINE_RE.match(line) for line in lines), lines
        return lines


def make_marker(mount: Path) -> str:
    """The volume marker as aurora-storage@.service makes it (aurora-volume-id)."""
    volume_id, made = load_program("aurora-volume-id").make_marker(mount)
    assert made
    return volume_id


def rendered(job: str) -> dict[str, Any]:
    """The config the image carries for ``job``, rendered from the default spec."""
    spec = load_spec(SPEC)
    return gws_config(spec, next(j for j in spec.gws.jobs if j.name == job))


def below(base: Path, path: str) -> str:
    """A rendered absolute path moved below ``base``, keeping its exact form."""
    assert path.startswith("/")
    return f"{base}{path}"


@pytest.fixture
def make_job(tmp_path: Path, endpoints: Endpoints) -> Callable[..., Job]:
    def make(name: str = "products", **overrides: Any) -> Job:
        base = tmp_path / name
        local, gws, config_dir = base / "local", base / "gws", base / "etc"
        config = rendered(name)
        config.update(
            source=below(local, config["source"]),
            dest=below(gws, config["dest"]),
            backup_dir=below(gws, config["backup_dir"]),
            volume_marker=below(local, config["volume_marker"]),
            log_dir=below(base, config["log_dir"]),
            lock_file=below(base, config["lock_file"]),
            user=endpoints.good.user,
            hosts=[entry(endpoints.good)],
        )
        # Every test host is host:port, so the rendered port 22 is never used.
        config["ssh"].update(
            identity=str(endpoints.identity), known_hosts=str(endpoints.known_hosts)
        )
        source, marker = Path(config["source"]), Path(config["volume_marker"])
        for directory in (source, config_dir):
            directory.mkdir(parents=True)
        make_marker(marker.parent)
        job = Job(
            name,
            config_dir,
            source,
            Path(config["dest"]),
            Path(config["log_dir"]),
            Path(config["lock_file"]),
            config,
            marker,
            Path(config["backup_dir"]),
        )
        job.write_config(**overrides)
        return job

    return make


def test_rendered_configs_send_contents_and_name_the_volume() -> None:
    """What the image carries: no trailing slash anywhere, the marker of the source's volume."""
    raw, products = rendered("raw"), rendered("products")
    assert raw["source"] == "/project/aurora/raw"
    assert raw["dest"] == "/gws/ssde/j25b/gamb2le/data/raw"
    assert raw["volume_marker"] == f"/project/{VOLUME_MARKER}"
    assert products["volume_marker"] == f"/data/{VOLUME_MARKER}"
    assert products["excludes"] == ["/wxcam/"]
    assert products["backup_dir"] == "/gws/ssde/j25b/gamb2le/backups/products"
    assert products["max_delete"] == 50 and products["backup_days"] == 30
    assert products["timeouts"] == {
        "connect": 15,
        "alive_interval": 15,
        "alive_count": 4,
        "io": 600,
    }
    program = _load_program()
    for job in ("raw", "products", "products-wxcam", "manifests"):
        cfg = program.parse_config(rendered(job), Path(f"{job}.json"))
        assert not cfg.source.endswith("/") and cfg.volume_marker is not None


def test_an_ipv6_transfer_host_is_bracketed_for_rsync_and_bare_for_ssh() -> None:
    """The spec allows an IP address as a GWS host; rsync reads ``user@::1:dest`` as a
    daemon address, so the rsync target carries the address in brackets."""
    program = _load_program()
    cfg = program.parse_config({**rendered("raw"), "hosts": ["2001:db8::5"]}, Path("raw.json"))
    (host,) = cfg.hosts
    rsync = program.rsync_command(cfg, host, "2026-05-02T120000Z")
    assert rsync[-1] == f"{cfg.user}@[2001:db8::5]:{cfg.dest}/"
    assert program.preflight_command(cfg, host)[-2] == f"{cfg.user}@2001:db8::5"


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"


def tree(root: Path) -> dict[str, tuple[str, str]]:
    """Relative path -> (kind, content or link target), for exact comparison.

    The GWS copy's volume record is the push's own bookkeeping, not data: left out.
    """
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel == RECORD:
            continue
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir", "")
        else:
            found[rel] = ("file", path.read_text())
    return found


def line_index(lines: list[str], needle: str) -> int:
    matches = [i for i, line in enumerate(lines) if needle in line]
    assert len(matches) == 1, f"{needle!r} in {len(matches)} lines:\n" + "\n".join(lines)
    return matches[0]


# --------------------------------------------------------------------------
# Failover
# --------------------------------------------------------------------------


def test_failover_refused_then_rsync_failure_then_success(make_job, endpoints) -> None:
    refused, broken, good = dead_entry(), entry(endpoints.broken), entry(endpoints.spare)
    job = make_job(hosts=[refused, broken, good])
    job.put("plots/2026/05/02/quicklook.png")
    job.put("nc/aurora_met_20260502.nc")
    (job.source / "nc/hardlink.nc").hardlink_to(job.source / "nc/aurora_met_20260502.nc")
    (job.source / "latest.png").symlink_to("plots/2026/05/02/quicklook.png")
    broken_before = endpoints.logins(endpoints.broken)
    good_before = endpoints.logins(endpoints.spare)

    result = job.run()

    assert_ok(result)
    assert tree(job.dest) == tree(job.source)
    original, linked = job.dest / "nc/aurora_met_20260502.nc", job.dest / "nc/hardlink.nc"
    assert original.stat().st_ino == linked.stat().st_ino  # -H kept the hard link
    assert original.stat().st_nlink == 2
    # The broken endpoint was reached for the preflight, the first push's volume
    # record and rsync; the good one for the preflight (record found) and rsync.
    assert endpoints.logins(endpoints.broken) == broken_before + 3
    assert endpoints.logins(endpoints.spare) == good_before + 2
    assert job.record() == json.loads(job.marker.read_text())["id"]

    lines = job.log_lines()
    story = [
        line_index(lines, "start job=products"),
        line_index(lines, f"host 1/3 {refused}: preflight failed (ssh exit 255)"),
        line_index(lines, f"host 2/3 {broken}: preflight ok: record=none files=no"),
        line_index(lines, "recorded (first push)"),
        line_index(lines, f"host 2/3 {broken}: rsync failed (exit 12)"),
        line_index(lines, f"host 3/3 {good}: preflight ok"),
        line_index(lines, f"host 3/3 {good}: rsync ok (exit 0)"),
        line_index(lines, f"ok: transferred via {good} (host 3/3, 2 earlier host(s) failed)"),
    ]
    assert story == sorted(story), "\n".join(lines)
    assert "Connection refused" in lines[story[1]]
    assert "test endpoint: rsync refused" in lines[story[4]]
    assert lines[-1] == lines[story[-1]]  # the outcome closes the log
    assert result.stdout.startswith(f"aurora-gws-push: products: ok: transferred via {good}")
    assert str(job.logs()[0]) in result.stdout
    assert result.stdout.count("\n") == 1


def test_first_good_host_wins_and_later_hosts_are_not_contacted(make_job, endpoints) -> None:
    job = make_job(hosts=[entry(endpoints.good), entry(endpoints.spare)])
    job.put("a.txt")
    spare_before = endpoints.logins(endpoints.spare)

    assert_ok(job.run())

    assert tree(job.dest) == tree(job.source)
    assert endpoints.logins(endpoints.spare) == spare_before
    lines = job.log_lines()
    assert not any("host 2/2" in line for line in lines)
    assert lines[-1].split(" ", 1)[1].startswith(f"ok: transferred via {entry(endpoints.good)}")


def test_all_hosts_failing_exits_1_and_logs_it(make_job, endpoints) -> None:
    job = make_job(hosts=[dead_entry(), entry(endpoints.broken), dead_entry()])
    job.put("a.txt")

    result = job.run()

    assert result.returncode == 1, result.stderr
    assert "all transfer hosts failed (3 tried)" in result.stdout
    lines = job.log_lines()
    assert "all transfer hosts failed (3 tried)" in lines[-1]
    assert sum("preflight failed" in line for line in lines) == 2
    assert sum("rsync failed" in line for line in lines) == 1
    assert not (job.dest / "a.txt").exists()


def test_missing_source_contacts_no_host(make_job, endpoints) -> None:
    job = make_job(source="/nonexistent/aurora/products")
    before = endpoints.logins(endpoints.good)

    result = job.run()

    assert result.returncode == 3
    assert "refused: source /nonexistent/aurora/products does not exist" in result.stdout
    assert "fix: mount the volume" in result.stdout and result.stdout.count("\n") == 1
    assert "does not exist" in "\n".join(job.log_lines())
    assert endpoints.logins(endpoints.good) == before


def test_missing_rsync_is_a_local_error_not_a_host_failure(make_job, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    ssh = shutil.which("ssh")
    assert ssh is not None
    (bindir / "ssh").symlink_to(ssh)  # ssh works, rsync is nowhere on PATH
    job = make_job()
    job.put("a.txt")

    result = job.run(env={"PATH": str(bindir)})

    assert result.returncode == 1
    assert "local error, transfer abandoned" in result.stdout and "rsync" in result.stdout
    lines = job.log_lines()
    assert line_index(lines, "preflight ok") < line_index(lines, "rsync started")
    assert "local error, transfer abandoned" in lines[-1]


# --------------------------------------------------------------------------
# rsync semantics
# --------------------------------------------------------------------------


def test_excludes_leave_wxcam_out_and_protect_the_remote_copy(make_job) -> None:
    """The rendered products job: /wxcam/ is anchored at the transfer root and matches."""
    job = make_job()
    job.put("plots/quicklook.png")
    assert_ok(job.run())  # the first push, to an empty GWS copy, records the volume
    job.put("quicklooks/wxcam/latest.png")  # anchored: a deeper wxcam/ is still pushed
    job.put("wxcam/FISH/HDR_new.jpg")
    remote_wxcam = job.dest / "wxcam/FISH/HDR_old.jpg"
    remote_wxcam.parent.mkdir(parents=True)
    remote_wxcam.write_text("pushed by the products-wxcam job")
    (job.dest / "stale.png").write_text("gone from the source")

    assert_ok(job.run())

    assert remote_wxcam.read_text() == "pushed by the products-wxcam job"
    assert not (job.dest / "wxcam/FISH/HDR_new.jpg").exists()
    assert (job.dest / "plots/quicklook.png").exists()
    assert (job.dest / "quicklooks/wxcam/latest.png").exists()
    assert not (job.dest / "stale.png").exists()  # not excluded: deleted as usual
    assert "--exclude=/wxcam/" in job.logs()[-1].read_text()


def test_delete_delay_removes_files_gone_from_the_source(make_job) -> None:
    job = make_job()
    job.put("keep.txt")
    job.put("old/drop.txt")
    assert_ok(job.run())
    assert (job.dest / "old/drop.txt").exists()
    shutil.rmtree(job.source / "old")
    job.put("keep.txt", "changed\n")

    assert_ok(job.run())

    assert tree(job.dest) == {"keep.txt": ("file", "changed\n")}
    # What was deleted or replaced is in a dated backup directory, not gone.
    [backup] = job.backup_runs()
    assert STAMP_RE.fullmatch(backup.name)
    assert tree(backup) == {
        "keep.txt": ("file", "data of keep.txt\n"),
        "old": ("dir", ""),
        "old/drop.txt": ("file", "data of old/drop.txt\n"),
    }


@pytest.mark.parametrize("slash", ["", "/"])
def test_source_contents_are_sent_with_or_without_trailing_slash(make_job, slash: str) -> None:
    """The deployment sends contents (`rsync SRC/ host:DEST/`): never data/raw/raw/."""
    job = make_job(name="raw")
    job.write_config(source=str(job.source) + slash)
    job.put("cl61/gamb2le_depolarisation_lidar_ceilometer_aurora_20260502.nc")
    job.put("wxcam/FISH/HDR_20260502_1200.jpg")

    assert_ok(job.run())

    assert job.dest.name == "raw" and job.dest.parent.name == "data"
    assert tree(job.dest) == tree(job.source)
    assert not (job.dest / "raw").exists()


def test_dest_with_shell_metacharacters_is_quoted(make_job, tmp_path: Path) -> None:
    dest = tmp_path / "gws dir" / "it's $HOME `x`"
    job = make_job(dest=str(dest))
    job.put("a.txt")

    assert_ok(job.run())

    assert tree(dest) == {"a.txt": ("file", "data of a.txt\n")}


def test_rsync_options_are_passed_through(make_job) -> None:
    job = make_job(rsync_options=["--itemize-changes"])
    job.put("itemized.txt")

    assert_ok(job.run())

    # rsync's stdout goes into the run log.
    assert any(line.endswith(" itemized.txt") for line in job.logs()[0].read_text().splitlines())


def test_rsync_exit_24_counts_as_success(make_job, tmp_path: Path) -> None:
    """A real transfer through an rsync that then reports "some files vanished"."""
    real = shutil.which("rsync")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "rsync").write_text(f'#!/bin/sh\n{real} "$@" || exit $?\nexit 24\n')
    (bindir / "rsync").chmod(0o755)
    job = make_job()
    job.put("a.txt")

    result = job.run(env={"PATH": f"{bindir}:{os.environ['PATH']}"})

    assert_ok(result)
    assert (job.dest / "a.txt").exists()
    assert any("rsync ok (exit 24: some source files vanished" in line for line in job.log_lines())


def _load_program() -> ModuleType:
    return load_program("aurora-gws-push")


@pytest.mark.parametrize(
    ("code", "ok"), [(0, True), (24, True), (12, False), (23, False), (255, False), (-9, False)]
)
def test_rsync_exit_code_decision(code: int, ok: bool) -> None:
    assert _load_program().rsync_succeeded(code) is ok


# --------------------------------------------------------------------------
# Locking and naming
# --------------------------------------------------------------------------


def test_concurrent_run_is_refused(make_job, endpoints) -> None:
    job = make_job()
    job.put("a.txt")
    job.lock.parent.mkdir(parents=True)
    before = endpoints.logins(endpoints.good)
    with job.lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = job.run()

    assert result.returncode == 75
    assert result.stderr == f"aurora-gws-push: products: another run holds {job.lock}\n"
    assert job.logs() == []
    assert not job.dest.exists()
    assert endpoints.logins(endpoints.good) == before


def test_job_name_is_derived_from_link_name(make_job, tmp_path: Path) -> None:
    job = make_job(name="products-wxcam")
    job.put("FISH/HDR_1.jpg")
    link = tmp_path / "bin" / "aurora-gws-rsync-products-wxcam"
    link.parent.mkdir()
    link.symlink_to(PROGRAM)

    result = job.run(argv=[str(link)], env={"AURORA_GWS_CONFIG_DIR": str(job.config_dir)})

    assert_ok(result)
    assert result.stdout.startswith("aurora-gws-push: products-wxcam: ok")
    assert (job.dest / "FISH/HDR_1.jpg").exists()
    assert job.log_lines()[0].endswith(
        f"start job=products-wxcam name=products-wxcam source={job.source}/ "
        f"dest={job.config['user']}@[{job.config['hosts'][0]}]:{job.dest}/ max_delete=50"
    )


def test_program_name_without_job_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(PROGRAM), "--config-dir", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no JOB" in result.stderr


# --------------------------------------------------------------------------
# Config validation
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (drop("dest"), "'dest'"),
        (drop("excludes"), "'excludes'"),
        (set_key("source", "relative/products/"), "'source'"),
        (set_key("dest", "gws/relative"), "'dest'"),
        (set_key("hosts", []), "'hosts'"),
        (set_key("hosts", "xfer-vm-03.jasmin.ac.uk"), "'hosts'"),
        (set_key("hosts", ["xfer-vm-03.jasmin.ac.uk:0"]), "'hosts[0]'"),
        (set_key("hosts", ["xfer-vm-03:ssh"]), "'hosts[0]'"),
        (set_key("hosts", ["-oProxyCommand=touch /tmp/pwned"]), "'hosts[0]'"),
        (set_key("user", "rrniii@xfer"), "'user'"),
        (set_key("excludes", "wxcam/"), "'excludes'"),
        (set_key("rsync_options", [""]), "'rsync_options'"),
        (set_key("log_dir", None), "'log_dir'"),
        (set_key("lock_file", "run/gws.lock"), "'lock_file'"),
        (set_key("host", "typo"), "'host'"),
        (set_key("ssh", None), "'ssh'"),
        (set_ssh("port", True), "'ssh.port'"),
        (set_ssh("port", 70000), "'ssh.port'"),
        (set_ssh("identity", "id_rsa"), "'ssh.identity'"),
        (set_ssh("options", "BatchMode=yes"), "'ssh.options'"),
        (set_ssh("ciphers", []), "'ssh.ciphers'"),
        (lambda c: c["ssh"].pop("known_hosts"), "'ssh.known_hosts'"),
        (drop("timeouts"), "'timeouts'"),
        (lambda c: c["timeouts"].update(io=0), "'timeouts.io'"),
        (lambda c: c["timeouts"].pop("connect"), "'timeouts.connect'"),
        (set_key("max_delete", -1), "'max_delete'"),
        (set_key("max_delete", "50"), "'max_delete'"),
        (set_key("backup_dir", "backups"), "'backup_dir'"),
        (set_key("backup_days", 0), "'backup_days'"),
        (drop("volume_marker"), "'volume_marker'"),
        (set_key("volume_marker", "data/.aurora-volume-id"), "'volume_marker'"),
    ],
)
def test_bad_config_is_a_one_line_error_naming_file_and_key(
    make_job, mutate: Callable[[dict[str, Any]], None], key: str
) -> None:
    job = make_job()
    mutate(job.config)
    path = job.write_config()

    result = job.run()

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert str(path) in result.stderr and key in result.stderr, result.stderr
    assert not job.lock.exists() and job.logs() == []


@pytest.mark.parametrize("content", [None, "{not json", "[]"])
def test_missing_or_unparsable_config_is_a_one_line_error(make_job, content) -> None:
    job = make_job()
    path = job.config_dir / "products.json"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)

    result = job.run()

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(path) in result.stderr, result.stderr


# --------------------------------------------------------------------------
# The GWS copy is never wiped by accident
# --------------------------------------------------------------------------


def one_line_fix(result: subprocess.CompletedProcess[str], fix: str) -> str:
    """A refused push: exit 3 and one stdout line that names the fix."""
    assert result.returncode == 3, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stdout.count("\n") == 1 and result.stderr == "", result
    line = result.stdout
    assert "refused: " in line and "; fix: " in line and fix in line, line
    return line


def pushed(job: Job, *names: str) -> dict[str, tuple[str, str]]:
    for name in names:
        job.put(name)
    assert_ok(job.run())
    return tree(job.dest)


def test_first_push_records_the_volume_and_later_pushes_check_it(make_job) -> None:
    job = make_job()
    volume = json.loads(job.marker.read_text())["id"]
    pushed(job, "cl61/a.zarr/0")
    assert job.record() == volume
    assert (job.dest / RECORD).stat().st_mode & 0o777 != 0  # a plain file beside the data

    job.put("cl61/a.zarr/1")
    assert_ok(job.run())  # same volume: pushes as usual, the record survives --delete
    assert job.record() == volume and (job.dest / "cl61/a.zarr/1").exists()


def test_swapped_volume_is_refused_and_the_gws_copy_kept(make_job, endpoints) -> None:
    job = make_job()
    before = pushed(job, "cl61/a.zarr/0", "plots/b.png")
    old = job.record()
    # A different volume with different (fewer) files: a wrong share, a fresh disk.
    shutil.rmtree(job.source)
    job.source.mkdir()
    job.put("cl61/other.zarr/0")
    new = job.new_volume()

    result = job.run()

    line = one_line_fix(
        result, f"runuser -u {getpass.getuser()} -- aurora-gws-rsync-{job.name} --adopt`"
    )
    assert f"volume {new}" in line and f"volume {old}" in line
    assert tree(job.dest) == before and job.record() == old
    assert job.backup_runs() == []
    # Two runs within one second share a log file: look at the refused run's part only.
    refused_run = job.logs()[-1].read_text().rsplit(" start job=", 1)[1]
    assert "refused:" in refused_run and "rsync started" not in refused_run


def test_adopt_takes_the_new_volume_and_pushes(make_job) -> None:
    job = make_job()
    pushed(job, "a.txt")
    new = job.new_volume()
    job.put("b.txt")

    result = job.run("--adopt")

    assert_ok(result)
    assert job.record() == new
    assert tree(job.dest) == tree(job.source)
    assert "adopted" in job.logs()[-1].read_text()
    assert_ok(job.run())  # adopted: the next timer run needs no flag


def test_gws_copy_without_record_needs_adopting(make_job) -> None:
    """A copy pushed before records existed (the Ansible deployment's) is not trusted blindly."""
    job = make_job()
    job.dest.mkdir(parents=True)
    (job.dest / "legacy.nc").write_text("pushed by the Ansible host")
    job.put("new.nc")

    one_line_fix(job.run(), "aurora-gws-rsync-products --adopt")
    assert tree(job.dest) == {"legacy.nc": ("file", "pushed by the Ansible host")}

    assert_ok(job.run("--adopt"))
    assert job.record() is not None and (job.dest / "new.nc").exists()


@pytest.mark.parametrize("adopt", [False, True])
def test_blank_volume_never_empties_the_gws_copy(make_job, adopt: bool) -> None:
    """Rebuild from nothing: a new, empty volume (the storage layout's directories only)."""
    job = make_job()
    before = pushed(job, "cl61/a.zarr/0", "ops_monitor/health/h.json")
    shutil.rmtree(job.source)
    for directory in ("cl61", "ops_monitor/health", "quicklooks/power"):
        (job.source / directory).mkdir(parents=True)
    job.new_volume()

    result = job.run(*(["--adopt"] if adopt else []))

    line = one_line_fix(result, "restore")
    assert "holds no files but the GWS copy" in line
    assert tree(job.dest) == before
    assert job.backup_runs() == []


def test_excluded_files_do_not_count_as_content(make_job) -> None:
    """products with only wxcam/ (pushed by its own job) is empty for the products push."""
    job = make_job()
    before = pushed(job, "plots/quicklook.png")
    (job.source / "plots/quicklook.png").unlink()
    job.put("wxcam/FISH/HDR_1.jpg")

    one_line_fix(job.run(), "holds no files")
    assert tree(job.dest) == before


def test_missing_marker_names_the_storage_unit(make_job) -> None:
    job = make_job()
    job.marker.unlink()
    job.put("a.txt")

    one_line_fix(job.run(), "systemctl start aurora-storage@")
    assert not job.dest.exists() or tree(job.dest) == {}


def test_deletions_are_bounded_and_backed_up(make_job) -> None:
    job = make_job(max_delete=2)
    pushed(job, *(f"f{i}.txt" for i in range(5)))
    for i in range(3):
        (job.source / f"f{i}.txt").unlink()

    line = one_line_fix(job.run(), f"aurora-gws-rsync-{job.name} --max-delete N`")
    assert "more than 2 files" in line
    remaining = {name for name in tree(job.dest) if name.startswith("f")}
    assert len(remaining) == 3  # two deleted, the third kept
    [backup] = job.backup_runs()
    assert len(list(backup.iterdir())) == 2  # ...and the two are in the backup

    assert_ok(job.run("--max-delete", "10"))
    assert tree(job.dest) == tree(job.source)


def test_old_backups_are_pruned_by_the_push(make_job) -> None:
    job = make_job(backup_days=7)
    today = dt.datetime.now(dt.UTC).date()
    old = (today - dt.timedelta(days=8)).isoformat() + "T010203Z"
    recent = (today - dt.timedelta(days=6)).isoformat() + "T010203Z"
    for name in (old, recent, "notes"):
        (job.backups / name).mkdir(parents=True)
        (job.backups / name / "kept.txt").write_text("x")

    pushed(job, "a.txt")

    assert sorted(p.name for p in job.backup_runs()) == sorted([recent, "notes"])
    assert f"pruned 1 backup(s) older than 7 days: {old}" in job.logs()[-1].read_text()


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (
            ["2026-11-01T000000Z", "2026-10-31T235959Z", "2026-10-30T000000Z"],
            ["2026-10-30T000000Z"],
        ),
        (["2026-10-01", "latest", "2026-10-01T0000Z", "../2026-01-01T000000Z"], []),
    ],
)
def test_expired_backups_only_ever_names_its_own_dated_dirs(names, expected) -> None:
    program = _load_program()
    assert program.expired_backups(names, dt.date(2026, 11, 30), 30) == expected


# --------------------------------------------------------------------------
# No push hangs
# --------------------------------------------------------------------------


def test_stalled_host_times_out_then_the_next_run_succeeds(make_job, endpoints) -> None:
    """A host that accepts the connection and then says nothing."""
    with stalling_proxy(endpoints.good.port) as proxy:
        job = make_job(hosts=[f"{sshd.HOST}:{proxy.port}"])
        job.config["timeouts"].update(connect=2, alive_interval=1, alive_count=2, io=3)
        job.write_config()
        # The proxy's port is another "host" for known_hosts: pin the good server's key there.
        key = endpoints.good.known_hosts.read_text().split(" ", 1)[1]
        with endpoints.known_hosts.open("a") as handle:
            handle.write(f"[{sshd.HOST}]:{proxy.port} {key}")
        job.put("a.txt")

        started = time.monotonic()
        result = job.run()
        elapsed = time.monotonic() - started

        assert result.returncode == 1 and "all transfer hosts failed (1 tried)" in result.stdout
        assert elapsed < 10, elapsed
        assert "timed out" in job.logs()[-1].read_text()

        proxy.stalling = False
        assert_ok(job.run())
        assert (job.dest / "a.txt").exists()


def test_unwritable_log_dir_is_one_line_naming_the_fix(make_job, tmp_path: Path) -> None:
    """/data not mounted: the log directory cannot be made; nothing is contacted."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    job = make_job(log_dir=str(blocker / "gws_push_logs"))
    job.put("a.txt")

    result = job.run()

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "fix: check that the volume" in result.stderr
    assert not job.dest.exists()
