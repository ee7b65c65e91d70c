"""aurora-mirror-verify on real trees over real ssh on loopback.

Two throwaway sshd endpoints stand in for the instrument source host and the
JASMIN transfer host; the "remote" trees are tmp dirs on this machine, so each
run exercises the real ssh command lines, the remote ``find -printf`` quoting
and remote ``sha256sum`` exactly as on the image.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import sshd
from tests.paths import REPO_ROOT
from tests.programs import drop, set_key

ROOT = REPO_ROOT
PROGRAM = ROOT / "mkosi.extra/usr/lib/aurora/aurora-mirror-verify"
DAY = 86400
CL61 = "gamb2le_depolarisation_lidar_ceilometer_aurora_"
COPIES = ("source", "local", "gws")


@pytest.fixture(autouse=True, scope="module")
def _tools() -> None:
    """`make setup` installs these; a missing one is a failure, not a skip."""
    missing = sshd.missing_tools()
    missing += [tool for tool in ("find", "sha256sum", "xargs") if shutil.which(tool) is None]
    assert not missing, f"needs {', '.join(missing)}"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[sshd.SshServer]]:
    """servers[0] plays the instrument source host, servers[1] the GWS transfer host."""
    with sshd.running_sshd(tmp_path_factory.mktemp("sshd"), count=2) as running:
        yield running


def ssh_block(server: sshd.SshServer) -> dict[str, Any]:
    return {
        "identity": str(server.client_key),
        "port": server.port,
        "options": ["StrictHostKeyChecking=yes", "LogLevel=ERROR"],
        "known_hosts": str(server.known_hosts),
    }


def spot_selected(name: str, modulus: int) -> bool:
    """The program's documented stable index."""
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % modulus == 0


@dataclass
class Site:
    """One config plus the source, local and GWS trees of its streams."""

    base: Path
    config_path: Path
    root: Path
    lock: Path
    config: dict[str, Any]
    dirs: dict[str, dict[str, Path]]  # stream -> copy -> directory

    def write_config(self) -> Path:
        self.config_path.write_text(json.dumps(self.config, indent=2))
        return self.config_path

    def stream(self, name: str = "cl61") -> dict[str, Any]:
        return next(s for s in self.config["streams"] if s["name"] == name)

    def run(
        self, *args: str, env: dict[str, str] | None = None, config: bool = True
    ) -> subprocess.CompletedProcess[str]:
        self.write_config()
        cmd = [str(PROGRAM), *(["--config", str(self.config_path)] if config else []), *args]
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **(env or {})},
            check=False,
        )

    def put(
        self,
        name: str,
        age: float = DAY,
        content: str | None = None,
        copies: tuple[str, ...] = COPIES,
        stream: str = "cl61",
    ) -> None:
        """Create ``name`` in the given copies with mtime ``age`` seconds in the past."""
        stamp = time.time() - age
        for copy in copies:
            path = self.dirs[stream][copy] / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content if content is not None else f"data of {name}\n")
            os.utime(path, (stamp, stamp))

    @property
    def latest(self) -> Path:
        return self.root / "latest"

    def summary(self, stream: str = "cl61") -> dict[str, Any]:
        return json.loads((self.latest / "summary.json").read_text())["streams"][stream]

    def manifest(self, copy: str, stream: str = "cl61") -> dict[str, Any]:
        return json.loads((self.latest / f"{stream}.{copy}.json").read_text())

    def runs(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.name[:1].isdigit())


@pytest.fixture
def site(tmp_path: Path, servers: list[sshd.SshServer]) -> Site:
    source, gws = servers
    dirs: dict[str, dict[str, Path]] = {}
    for stream in ("cl61", "products"):
        dirs[stream] = {copy: tmp_path / stream / copy for copy in COPIES}
        for path in dirs[stream].values():
            path.mkdir(parents=True)
    config: dict[str, Any] = {
        "manifest_root": str(tmp_path / "manifests"),
        "keep": 48,
        "lock_file": str(tmp_path / "lock" / "mirror-verify.lock"),
        "settle_seconds": {"local": 600, "gws": 2700, "products": 900},
        "checksum": {"mode": "none", "spot_modulus": 10},
        "gws": {
            "user": gws.user,
            "hosts": [f"{gws.host}:{gws.port}"],
            "ssh": {**ssh_block(gws), "port": 22},  # the host entry's port wins
        },
        "streams": [
            {
                "name": "cl61",
                "patterns": [f"{CL61}*.nc"],
                "source": {
                    "host": source.host,
                    "user": source.user,
                    "path": str(dirs["cl61"]["source"]),
                    "ssh": ssh_block(source),
                },
                "local": str(dirs["cl61"]["local"]),
                "gws": str(dirs["cl61"]["gws"]),
                "settle": "local",
            }
        ],
    }
    return Site(
        base=tmp_path,
        config_path=tmp_path / "mirror-verify.json",
        root=tmp_path / "manifests",
        lock=tmp_path / "lock" / "mirror-verify.lock",
        config=config,
        dirs=dirs,
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"


# --------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------


def test_agreeing_settled_copies_are_all_safe_to_prune(site: Site) -> None:
    names = [f"{CL61}20260502_1200.nc", f"{CL61}20260502_1300.nc", f"{CL61}it's a $HOME.nc"]
    for name in names:
        site.put(name)
    site.put("unrelated.nc")  # pattern does not match
    site.put(f"sub/{CL61}nested.nc")  # not directly in the directory
    (site.dirs["cl61"]["source"] / f"{CL61}link.nc").symlink_to(
        site.dirs["cl61"]["source"] / names[0]
    )

    result = site.run()

    assert_ok(result)
    assert not result.stderr
    summary = site.summary()
    assert summary["safe_to_prune"] == sorted(names)
    assert summary["counts"] == {"source": 3, "local": 3, "gws": 3}
    assert summary["missing_on_gws"] == summary["missing_locally"] == []
    assert summary["mismatched"] == summary["unsettled"] == []
    assert summary["errors"] == {}
    assert "cl61: source=3 local=3 gws=3 " in result.stdout
    assert "safe_to_prune=3" in result.stdout

    gws = site.config["gws"]["hosts"][0]
    assert summary["gws_host"] == gws
    for copy in COPIES:
        manifest = site.manifest(copy)
        assert manifest["copy"] == copy and manifest["stream"] == "cl61"
        assert isinstance(manifest["taken_at"], int)
        entry = manifest["files"][names[0]]
        path = site.dirs["cl61"][copy] / names[0]
        assert entry == {
            "size": path.stat().st_size,
            "mtime": int(path.stat().st_mtime),
            "sha256": None,
        }
    assert site.manifest("gws")["host"] == gws
    run_dir = site.latest.resolve()
    assert site.latest.is_symlink() and run_dir.parent == site.root.resolve()
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "cl61.gws.json",
        "cl61.local.json",
        "cl61.source.json",
        "summary.json",
    ]
    assert not [p for p in site.root.iterdir() if p.name.startswith(".")]  # no temp left


def test_file_missing_on_gws_is_listed_and_not_safe(site: Site) -> None:
    site.put(f"{CL61}a.nc")
    site.put(f"{CL61}b.nc", copies=("source", "local"))
    site.put(f"{CL61}c.nc", copies=("source", "gws"))

    # The environment variable stands in for --config.
    result = site.run(env={"AURORA_MIRROR_VERIFY_CONFIG": str(site.config_path)}, config=False)

    assert_ok(result)
    summary = site.summary()
    assert summary["missing_on_gws"] == [f"{CL61}b.nc"]
    assert summary["missing_locally"] == [f"{CL61}c.nc"]
    assert summary["safe_to_prune"] == [f"{CL61}a.nc"]
    assert "missing_on_gws=1 missing_locally=1 mismatched=0 safe_to_prune=1" in result.stdout


def test_files_must_be_settled_in_both_copies(site: Site) -> None:
    cases = {  # name: (local age, gws age); windows are local 600 s, gws 2700 s
        f"{CL61}just_written.nc": (0, 0),
        f"{CL61}settled_locally_only.nc": (1200, 1200),
        f"{CL61}settled_on_gws_only.nc": (300, 3000),
        f"{CL61}settled.nc": (3000, 3000),
    }
    for name, (local_age, gws_age) in cases.items():
        # A source file older than both copies: not modified since they were taken.
        site.put(name, age=DAY, copies=("source",))
        site.put(name, age=local_age, copies=("local",))
        site.put(name, age=gws_age, copies=("gws",))

    assert_ok(site.run())

    summary = site.summary()
    assert summary["safe_to_prune"] == [f"{CL61}settled.nc"]
    assert summary["unsettled"] == sorted(set(cases) - {f"{CL61}settled.nc"})


def test_source_modified_after_the_copies_is_not_safe(site: Site) -> None:
    name = f"{CL61}rewritten.nc"
    site.put(name, age=DAY, copies=("local", "gws"))
    site.put(name, age=DAY - 60, copies=("source",))  # same size, newer on the source

    assert_ok(site.run())

    summary = site.summary()
    assert summary["source_newer"] == [name]
    assert summary["safe_to_prune"] == []


def test_size_mismatch_is_listed_and_not_safe(site: Site) -> None:
    site.put(f"{CL61}ok.nc")
    site.put(f"{CL61}short.nc", copies=("source", "local"))
    site.put(f"{CL61}short.nc", content="trunc", copies=("gws",))

    result = site.run()

    assert_ok(result)
    summary = site.summary()
    assert summary["mismatched"] == [f"{CL61}short.nc"]
    assert summary["safe_to_prune"] == [f"{CL61}ok.nc"]
    assert "mismatched=1 safe_to_prune=1" in result.stdout


@pytest.mark.parametrize("mode", ["full", "none"])
def test_full_checksums_catch_same_size_different_content(site: Site, mode: str) -> None:
    good, bad = f"{CL61}good.nc", f"{CL61}flipped.nc"
    site.put(good, content="payload A\n")
    site.put(bad, content="payload A\n", copies=("source", "local"))
    site.put(bad, content="payload B\n", copies=("gws",))  # same size, other bytes
    site.config["checksum"]["mode"] = mode

    assert_ok(site.run())

    summary = site.summary()
    if mode == "none":  # size alone cannot tell: this is what "full" is for
        assert summary["safe_to_prune"] == [bad, good]
        return
    assert summary["mismatched"] == [bad]
    assert summary["safe_to_prune"] == [good]
    digest_a = hashlib.sha256(b"payload A\n").hexdigest()
    for copy in COPIES:  # computed on each side, remotely by sha256sum over ssh
        assert site.manifest(copy)["files"][good]["sha256"] == digest_a
    assert (
        site.manifest("gws")["files"][bad]["sha256"] == hashlib.sha256(b"payload B\n").hexdigest()
    )


def test_spot_checksums_cover_the_same_stable_subset_everywhere(site: Site) -> None:
    names = [f"{CL61}{index:02d}.nc" for index in range(12)]
    for name in names:
        site.put(name)
    site.config["checksum"] = {"mode": "spot", "spot_modulus": 3}
    picked = {name for name in names if spot_selected(name, 3)}
    assert picked and picked != set(names)  # the test needs both kinds

    assert_ok(site.run())

    for copy in COPIES:
        files = site.manifest(copy)["files"]
        assert {name for name, entry in files.items() if entry["sha256"]} == picked
    assert site.summary()["safe_to_prune"] == names


# --------------------------------------------------------------------------
# Unreachable copies
# --------------------------------------------------------------------------


def test_dead_first_gws_host_falls_back_to_the_next(site: Site) -> None:
    dead = f"127.0.0.1:{sshd.free_port()}"
    real = site.config["gws"]["hosts"][0]
    site.config["gws"]["hosts"] = [dead, real]
    site.put(f"{CL61}a.nc")

    result = site.run()

    assert_ok(result)
    assert not result.stderr
    assert site.summary()["gws_host"] == real
    assert site.manifest("gws")["hosts_tried"] == [dead, real]
    assert site.summary()["safe_to_prune"] == [f"{CL61}a.nc"]


def test_listing_failure_on_a_reachable_gws_host_does_not_try_the_next(site: Site) -> None:
    real = site.config["gws"]["hosts"][0]
    site.config["gws"]["hosts"] = [real, f"127.0.0.1:{sshd.free_port()}"]
    site.put(f"{CL61}a.nc")
    site.dirs["cl61"]["gws"].rename(site.base / "gws-moved")  # GWS reachable, path gone
    site.dirs["cl61"]["local"].rename(site.base / "local-moved")

    result = site.run()

    assert_ok(result)
    assert result.stderr.count("\n") == 2, result.stderr
    manifest = site.manifest("gws")
    assert manifest["hosts_tried"] == [real] and manifest["host"] == real
    assert "find on" in manifest["error"]
    assert "find failed" in site.manifest("local")["error"]
    summary = site.summary()
    assert summary["counts"] == {"source": 1, "local": None, "gws": None}
    assert summary["safe_to_prune"] == []


def test_no_reachable_gws_host_is_recorded_and_nothing_is_safe(site: Site) -> None:
    dead = [f"127.0.0.1:{sshd.free_port()}", f"127.0.0.1:{sshd.free_port()}"]
    site.config["gws"]["hosts"] = dead
    site.put(f"{CL61}a.nc")

    result = site.run()

    assert_ok(result)  # manifests were written; the gap is recorded, not fatal
    assert "cl61: gws copy not listed: no GWS transfer host reachable" in result.stderr
    assert result.stderr.count("\n") == 1
    manifest = site.manifest("gws")
    assert "files" not in manifest and "no GWS transfer host reachable" in manifest["error"]
    assert manifest["hosts_tried"] == dead
    summary = site.summary()
    assert summary["safe_to_prune"] == []
    assert summary["counts"] == {"source": 1, "local": 1, "gws": None}
    assert summary["missing_on_gws"] is None  # unknown, not "none missing"
    assert "gws" in summary["errors"]
    assert "gws=error" in result.stdout and "safe_to_prune=0" in result.stdout


def test_unreachable_source_is_recorded_and_nothing_is_safe(site: Site) -> None:
    # host:port overrides ssh.port, which still names the real server here.
    site.stream()["source"]["host"] = f"127.0.0.1:{sshd.free_port()}"
    site.put(f"{CL61}a.nc")

    result = site.run()

    assert_ok(result)
    assert "cl61: source copy not listed" in result.stderr
    assert "error" in site.manifest("source")
    summary = site.summary()
    assert summary["safe_to_prune"] == []
    assert summary["missing_locally"] is None
    assert summary["counts"] == {"source": None, "local": 1, "gws": 1}


def test_stream_without_source_uses_products_settle_window(site: Site) -> None:
    site.config["streams"].append(
        {
            "name": "products",
            "patterns": ["*.nc"],
            "source": None,
            "local": str(site.dirs["products"]["local"]),
            "gws": str(site.dirs["products"]["gws"]),
            "settle": "products",
        }
    )
    site.config["settle_seconds"]["gws"] = 600
    copies = ("local", "gws")
    site.put("settled.nc", age=1000, copies=copies, stream="products")
    site.put("young.nc", age=700, copies=copies, stream="products")  # > local, < products
    site.put("local_only.nc", copies=("local",), stream="products")

    result = site.run()

    assert_ok(result)
    summary = site.summary("products")
    assert summary["safe_to_prune"] == ["settled.nc"]
    assert summary["unsettled"] == ["young.nc"]
    assert summary["missing_on_gws"] == ["local_only.nc"]
    assert summary["counts"] == {"source": None, "local": 3, "gws": 2}
    assert not (site.latest / "products.source.json").exists()
    assert "products: source=- local=3 gws=2" in result.stdout


# --------------------------------------------------------------------------
# History, lock, failures
# --------------------------------------------------------------------------


def test_history_keeps_the_newest_runs_and_latest_points_at_the_last(site: Site) -> None:
    site.config["keep"] = 3
    # Retention needs no listings: skip the ssh handshakes (a dead port fails at once).
    site.stream()["source"] = None
    site.config["gws"]["hosts"] = [f"127.0.0.1:{sshd.free_port()}"]
    start = 1_777_777_200  # 2026-05-03T03:00:00Z
    stamps = [time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(start + i * 600)) for i in range(5)]

    for index in range(5):
        assert_ok(site.run("--now", str(start + index * 600)))

    assert site.runs() == stamps[-3:]
    assert os.readlink(site.latest) == stamps[-1]
    assert json.loads((site.latest / "summary.json").read_text())["run"] == stamps[-1]

    # Same clock again: a distinct directory, never an overwrite.
    assert_ok(site.run("--now", str(start + 4 * 600)))
    assert site.runs() == [stamps[3], stamps[4], f"{stamps[4]}-1"]
    assert os.readlink(site.latest) == f"{stamps[4]}-1"


def test_concurrent_run_is_refused(site: Site) -> None:
    site.lock.parent.mkdir(parents=True)
    with site.lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = site.run()

    assert result.returncode == 75
    assert result.stderr == f"aurora-mirror-verify: another run holds {site.lock}\n"
    assert not site.root.exists()


def test_nothing_writable_exits_1(site: Site) -> None:
    blocker = site.base / "not-a-dir"
    blocker.write_text("")
    site.config["manifest_root"] = str(blocker / "manifests")

    result = site.run()

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "cannot create a run directory" in result.stderr


# --------------------------------------------------------------------------
# Config validation
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (drop("manifest_root"), "'manifest_root'"),
        (set_key("keep", 0), "'keep'"),
        (set_key("keep", True), "'keep'"),
        (set_key("lock_file", "relative.lock"), "'lock_file'"),
        (set_key("extra", 1), "'extra'"),
        (lambda c: c["settle_seconds"].pop("gws"), "'settle_seconds.gws'"),
        (lambda c: c["checksum"].update(mode="some"), "'checksum.mode'"),
        (lambda c: c["checksum"].update(spot_modulus=0), "'checksum.spot_modulus'"),
        (lambda c: c["gws"].update(hosts=[]), "'gws.hosts'"),
        (lambda c: c["gws"].update(hosts=["xfer:99999"]), "'gws.hosts[0]'"),
        (lambda c: c["gws"]["ssh"].update(port="22"), "'gws.ssh.port'"),
        (lambda c: c["streams"][0].update(settle="gws"), "'streams[0].settle'"),
        (lambda c: c["streams"][0].update(name="CL 61"), "'streams[0].name'"),
        (lambda c: c["streams"][0].update(patterns=[]), "'streams[0].patterns'"),
        (lambda c: c["streams"][0].pop("source"), "'streams[0].source'"),
        (lambda c: c["streams"][0]["source"].update(path="data"), "'streams[0].source.path'"),
        (
            lambda c: c["streams"][0]["source"]["ssh"].pop("known_hosts"),
            "'streams[0].source.ssh.known_hosts'",
        ),
        (lambda c: c["streams"].append(dict(c["streams"][0])), "'streams[1].name'"),
        (set_key("streams", []), "'streams'"),
    ],
)
def test_bad_config_is_a_one_line_error_naming_file_and_key(
    site: Site, mutate: Callable[[dict[str, Any]], None], key: str
) -> None:
    mutate(site.config)

    result = site.run()

    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert str(site.config_path) in result.stderr and key in result.stderr, result.stderr
    assert not site.root.exists() and not site.lock.exists()


@pytest.mark.parametrize("content", [None, "{not json", "[]"])
def test_missing_or_unparsable_config_is_a_one_line_error(site: Site, content) -> None:
    path = site.base / "broken.json"
    if content is not None:
        path.write_text(content)

    result = subprocess.run(
        [str(PROGRAM), "--config", str(path)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(path) in result.stderr, result.stderr


def test_a_stalled_remote_call_counts_as_a_failed_host(monkeypatch) -> None:
    """A host that never answers is given up on (next host), not waited for."""
    from tests.programs import load_program

    program = load_program("aurora-mirror-verify")
    monkeypatch.setattr(program, "REMOTE_CALL_TIMEOUT", 1)
    started = time.monotonic()

    result = program.run(["sleep", "30"])

    assert time.monotonic() - started < 5
    assert result.returncode == program.SSH_FAILED
    assert b"timed out after 1s" in result.stderr
