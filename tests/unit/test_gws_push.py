"""aurora-gws-push against three real sshd endpoints on loopback.

Every "transfer host" is its own throwaway sshd on its own port (the program's
``host:port`` form of a ``hosts`` entry), so each run exercises the real ssh
preflight, the real ``rsync -aH --partial --delete-delay --delay-updates`` and
the failover between hosts exactly as on the image. The "broken" endpoint lets
ssh in and runs ``mkdir -p`` but refuses to start rsync (as a host with no
rsync, or a full quota, would), so its failure is a real rsync failure.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest

from tests import sshd
from tests.programs import ConfiguredRun, drop, load_program, set_key, set_ssh

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "mkosi.extra/usr/lib/aurora/aurora-gws-push"
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

    def put(self, name: str, content: str | None = None) -> Path:
        path = self.source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if content is not None else f"data of {name}\n")
        return path

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


@pytest.fixture
def make_job(tmp_path: Path, endpoints: Endpoints) -> Callable[..., Job]:
    def make(name: str = "products", **overrides: Any) -> Job:
        base = tmp_path / name
        source, dest, config_dir = base / "local", base / "gws" / "data" / name, base / "etc"
        for directory in (source, config_dir):
            directory.mkdir(parents=True)
        log_dir, lock = base / "manifests" / "gws-logs", base / "lock" / f"{name}.lock"
        config: dict[str, Any] = {
            "name": f"GWS {name}",
            "source": f"{source}/",
            "dest": str(dest),
            "user": endpoints.good.user,
            "hosts": [entry(endpoints.good)],
            "excludes": [],
            "rsync_options": [],
            "log_dir": str(log_dir),
            "lock_file": str(lock),
            "ssh": {
                "identity": str(endpoints.identity),
                "port": 22,  # every test host is host:port; 22 must never be used
                "options": ["StrictHostKeyChecking=yes", "LogLevel=ERROR"],
                "known_hosts": str(endpoints.known_hosts),
            },
        }
        job = Job(name, config_dir, source, dest, log_dir, lock, config)
        job.write_config(**overrides)
        return job

    return make


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"


def tree(root: Path) -> dict[str, tuple[str, str]]:
    """Relative path -> (kind, content or link target), for exact comparison."""
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
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
    # The broken endpoint really was reached twice (preflight, rsync), the good one too.
    assert endpoints.logins(endpoints.broken) == broken_before + 2
    assert endpoints.logins(endpoints.spare) == good_before + 2

    lines = job.log_lines()
    story = [
        line_index(lines, "start job=products"),
        line_index(lines, f"host 1/3 {refused}: preflight failed (ssh exit 255)"),
        line_index(lines, f"host 2/3 {broken}: preflight ok"),
        line_index(lines, f"host 2/3 {broken}: rsync failed (exit 12)"),
        line_index(lines, f"host 3/3 {good}: preflight ok"),
        line_index(lines, f"host 3/3 {good}: rsync ok (exit 0)"),
        line_index(lines, f"ok: transferred via {good} (host 3/3, 2 earlier host(s) failed)"),
    ]
    assert story == sorted(story), "\n".join(lines)
    assert "Connection refused" in lines[story[1]]
    assert "test endpoint: rsync refused" in lines[story[3]]
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
    job = make_job(source="/nonexistent/aurora/products/")
    before = endpoints.logins(endpoints.good)

    result = job.run()

    assert result.returncode == 1
    assert "failed before contacting any transfer host" in result.stdout
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
    job = make_job(excludes=["wxcam/"])
    job.put("plots/quicklook.png")
    job.put("wxcam/FISH/HDR_new.jpg")
    remote_wxcam = job.dest / "wxcam/FISH/HDR_old.jpg"
    remote_wxcam.parent.mkdir(parents=True)
    remote_wxcam.write_text("pushed by the products-wxcam job")
    (job.dest / "stale.png").write_text("gone from the source")

    assert_ok(job.run())

    assert remote_wxcam.read_text() == "pushed by the products-wxcam job"
    assert not (job.dest / "wxcam/FISH/HDR_new.jpg").exists()
    assert (job.dest / "plots/quicklook.png").exists()
    assert not (job.dest / "stale.png").exists()  # not excluded: deleted as usual
    assert "--exclude=wxcam/" in "\n".join(job.log_lines())


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


def test_source_without_trailing_slash_sends_the_directory_itself(make_job) -> None:
    job = make_job()
    job.put("a.txt")
    job.write_config(source=str(job.source))

    assert_ok(job.run())

    assert (job.dest / job.source.name / "a.txt").exists()


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


def test_ssh_command_shape() -> None:
    program = _load_program()
    ssh = program.SshConfig(
        identity="/home/aurora/.ssh/id", port=22, options=["A=b"], known_hosts="/k"
    )
    assert program.ssh_command(ssh, 2222) == [
        "ssh", "-p", "2222", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
        "-i", "/home/aurora/.ssh/id", "-o", "IdentitiesOnly=yes",
        "-o", "UserKnownHostsFile=/k", "-o", "A=b",
    ]  # fmt: skip
    bare = program.SshConfig(identity=None, port=22, options=[], known_hosts=None)
    assert program.ssh_command(bare) == [
        "ssh", "-p", "22", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
    ]  # fmt: skip


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
        f"start job=products-wxcam name=GWS products-wxcam source={job.source}/ "
        f"dest={job.config['user']}@[{job.config['hosts'][0]}]:{job.dest}"
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
        (set_key("hosts", ["xfer-vm-03.jasmin.ac.uk:0"]), "'hosts'"),
        (set_key("hosts", ["xfer-vm-03:ssh"]), "'hosts'"),
        (set_key("hosts", ["-oProxyCommand=touch /tmp/pwned"]), "'hosts'"),
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
