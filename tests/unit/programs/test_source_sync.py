"""aurora-source-sync against a real sshd and rsync on loopback.

The "remote" source host is this machine reached through a throwaway sshd, so
every run exercises the real ssh command line, the remote ``find`` quoting and
``rsync --files-from`` / ``--filter`` exactly as on the image.

Each stream's config is the one the renderer writes for the default spec
(hosts/aurora.yml), its absolute paths moved below the test's directory and its
host pointed at the loopback sshd; a test overrides only what it is about.
"""

from __future__ import annotations

import fcntl
import getpass
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from builder.render.configs import sync_config
from builder.spec.model import load_spec
from tests import sshd
from tests.paths import REPO_ROOT
from tests.programs import ConfiguredRun, drop, set_key, set_ssh
from tests.stall import stalling_proxy

ROOT = REPO_ROOT
PROGRAM = ROOT / "mkosi.extra/usr/lib/aurora/aurora-source-sync"
SPEC = ROOT / "hosts" / "aurora.yml"
DAY = 86400
CL61 = "gamb2le_depolarisation_lidar_ceilometer_aurora_"


@pytest.fixture(autouse=True, scope="module")
def _tools() -> None:
    """`make setup` installs these; a missing one is a failure, not a skip."""
    assert not sshd.missing_tools(), f"needs {', '.join(sshd.missing_tools())}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with sshd.running_sshd(tmp_path_factory.mktemp("sshd")) as servers:
        yield servers[0]


@dataclass
class Stream(ConfiguredRun):
    """One stream's config dir, remote source tree and local destination."""

    PROGRAM: ClassVar[Path] = PROGRAM

    name: str
    config_dir: Path
    remote: Path
    dest: Path
    state: Path
    lock: Path
    config: dict[str, Any]

    def put(self, name: str, age: float = 60, content: str | None = None) -> Path:
        """Create a remote file whose mtime is ``age`` seconds in the past."""
        path = self.remote / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if content is not None else f"data of {name}\n")
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))
        return path

    def pulled(self) -> set[str]:
        """Relative paths of all regular files in the destination."""
        if not self.dest.exists():
            return set()
        return {str(p.relative_to(self.dest)) for p in self.dest.rglob("*") if p.is_file()}

    def state_epoch(self) -> int:
        return int(self.state.read_text())


def rendered(stream: str) -> dict[str, Any]:
    """The config the image carries for ``stream``, rendered from the default spec."""
    spec = load_spec(SPEC)
    return sync_config(spec, next(s for s in spec.source_sync.streams if s.name == stream))


RENDERED = {s.name for s in load_spec(SPEC).source_sync.streams}


@pytest.fixture
def make_stream(tmp_path: Path, server: Any) -> Callable[..., Stream]:
    def make(name: str = "cl61", *, server: Any = server, **overrides: Any) -> Stream:
        """``name``'s rendered config (cl61's for names the spec lacks), moved below tmp."""
        base = tmp_path / name
        config = rendered(name if name in RENDERED else "cl61")
        config.update(
            name=name,
            source_host=server.host,
            source_user=server.user,
            source_dir=f"{base}/remote{config['source_dir']}",
            dest_dir=f"{base}/local{config['dest_dir']}",
            state_file=f"{base}/local{config['state_file']}",
            lock_file=f"{base}/local{config['lock_file']}",
        )
        config["ssh"].update(
            identity=str(server.client_key), port=server.port, known_hosts=str(server.known_hosts)
        )
        remote, config_dir = Path(config["source_dir"]), base / "etc"
        for directory in (remote, config_dir):
            directory.mkdir(parents=True)
        stream = Stream(
            name,
            config_dir,
            remote,
            Path(config["dest_dir"]),
            Path(config["state_file"]),
            Path(config["lock_file"]),
            config,
        )
        stream.write_config(**overrides)
        return stream

    return make


def test_rendered_streams_have_timeouts_overlap_and_bounded_deletes() -> None:
    cl61, wxcam = rendered("cl61"), rendered("wxcam")
    assert cl61["timeouts"] == {"connect": 15, "alive_interval": 15, "alive_count": 4, "io": 300}
    assert cl61["overlap"] == 600
    assert wxcam["mode"] == "mirror" and wxcam["max_delete"] == 100


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"


# --------------------------------------------------------------------------
# Incremental mode
# --------------------------------------------------------------------------


def test_first_run_with_lookback_pulls_only_recent_matching_files(make_stream) -> None:
    s = make_stream(lookback_days=10)
    s.put(f"{CL61}20260502_1200.nc", age=DAY)
    s.put(f"{CL61}20260502_1300.nc", age=60)
    s.put("unrelated_20260502.nc", age=60)
    before = int(time.time())

    result = s.run()

    assert_ok(result)
    assert s.pulled() == {f"{CL61}20260502_1200.nc", f"{CL61}20260502_1300.nc"}
    assert (s.dest / f"{CL61}20260502_1300.nc").read_text() == (f"data of {CL61}20260502_1300.nc\n")
    assert before <= s.state_epoch() <= int(time.time())
    assert "cl61" in result.stdout and "files=2" in result.stdout


def test_lookback_excludes_files_older_than_n_days_on_first_run(make_stream) -> None:
    s = make_stream(lookback_days=10)
    s.put(f"{CL61}old.nc", age=11 * DAY)
    s.put(f"{CL61}recent.nc", age=9 * DAY)

    assert_ok(s.run())

    assert s.pulled() == {f"{CL61}recent.nc"}


def test_a_source_directory_that_is_a_symlink_is_listed_through(make_stream) -> None:
    """An instrument's data directory may be a link to its disk: find starts through it
    (-H), as the mirror verifier's listing of the same directory does."""
    s = make_stream()
    s.put(f"{CL61}20260502_1200.nc")
    link = s.remote.parent / "data-link"
    link.symlink_to(s.remote)
    s.write_config(source_dir=str(link))

    assert_ok(s.run())

    assert s.pulled() == {f"{CL61}20260502_1200.nc"}


def test_non_matching_names_subdirs_and_symlinks_are_not_pulled(make_stream) -> None:
    s = make_stream(name="rpgfmcw94", patterns=["*LV1.NC", "*LV0.NC"])
    s.put("260502_120000_P07_ZEN.LV1.NC", age=400 * DAY)  # no lookback: whole history
    s.put("260502_120000_P07_ZEN.LV0.NC")
    s.put("260502_120000_P07_ZEN.LV1.NC.tmp")
    s.put("260502_120000_P07_ZEN.LV1.nc")  # find -name is case-sensitive
    s.put("sub/260502_130000_P07_ZEN.LV1.NC")  # maxdepth 1
    (s.remote / "link.LV1.NC").symlink_to(s.remote / "260502_120000_P07_ZEN.LV0.NC")

    assert_ok(s.run())

    assert s.pulled() == {"260502_120000_P07_ZEN.LV1.NC", "260502_120000_P07_ZEN.LV0.NC"}


def test_names_with_spaces_and_quotes_survive_remote_quoting(make_stream) -> None:
    s = make_stream(patterns=["it's *.dat"])
    s.put("it's a $HOME `file`.dat")
    s.put("its a file.dat")

    assert_ok(s.run())

    assert s.pulled() == {"it's a $HOME `file`.dat"}


def test_incremental_run_pulls_only_files_newer_than_state(make_stream) -> None:
    s = make_stream(lookback_days=10)  # lookback must not matter once state exists
    s.state.parent.mkdir(parents=True)
    s.state.write_text(f"{int(time.time()) - 3600}\n")
    s.put(f"{CL61}before_state.nc", age=7200)
    s.put(f"{CL61}after_state.nc", age=60)
    s.dest.mkdir(parents=True)
    (s.dest / "kept_local.nc").write_text("local")
    before = int(time.time())

    assert_ok(s.run())

    assert s.pulled() == {f"{CL61}after_state.nc", "kept_local.nc"}
    assert s.state_epoch() >= before

    copied = s.dest / f"{CL61}after_state.nc"
    inode = copied.stat().st_ino
    second = s.run()  # the overlap lists the recent file again; rsync leaves it be
    assert_ok(second)
    assert "files=1" in second.stdout
    assert s.pulled() == {f"{CL61}after_state.nc", "kept_local.nc"}
    assert copied.stat().st_ino == inode


def test_start_fresh_records_now_and_pulls_no_history(make_stream) -> None:
    s = make_stream(start_fresh=True, lookback_days=10)
    s.put(f"{CL61}history.nc", age=3600)  # older than the overlap
    before = int(time.time())

    assert_ok(s.run())

    assert s.pulled() == set()
    epoch = s.state_epoch()
    assert before <= epoch <= int(time.time())

    # Once state exists, start_fresh no longer matters: new files are pulled.
    s.put(f"{CL61}new.nc", age=-2)  # mtime just after the recorded epoch
    assert_ok(s.run())
    assert s.pulled() == {f"{CL61}new.nc"}


def test_min_stamp_excludes_asfs_files_stamped_before_it(make_stream) -> None:
    s = make_stream(
        name="asfs-crd",
        patterns=["aurora_asfs_data_sci_????????????.dat"],
        stamp_regex=r"_(\d{12})\.dat$",
        min_stamp="202605020000",
        lookback_days=10,
    )
    s.put("aurora_asfs_data_sci_202605011200.dat")
    s.put("aurora_asfs_data_sci_202605020000.dat")
    s.put("aurora_asfs_data_sci_202605021200.dat")

    result = s.run()

    assert_ok(result)
    assert s.pulled() == {
        "aurora_asfs_data_sci_202605020000.dat",
        "aurora_asfs_data_sci_202605021200.dat",
    }
    assert "files=2" in result.stdout


# --------------------------------------------------------------------------
# Mirror mode (WXcam)
# --------------------------------------------------------------------------

WXCAM_FILTERS = ["+ */", "+ HDR_*.jpg", "+ HDR_*.mp4", "- *"]


@pytest.mark.parametrize("delete_excluded", [True, False])
def test_wxcam_mirror_copies_hdr_only(make_stream, delete_excluded: bool) -> None:
    s = make_stream(
        name="wxcam",
        mode="mirror",
        patterns=[],
        filters=WXCAM_FILTERS,
        delete_excluded=delete_excluded,
    )
    wanted = {
        "FISH/2026/05/02/HDR_20260502_1200.jpg",
        "FISH/2026/05/02/HDR_20260502_1200.mp4",
        "PANO/2026/05/02/HDR_20260502_1200_PANO.jpg",
        "PANO/2026/05/02/HDR_20260502_1200_PANO.mp4",
    }
    unwanted = {
        "FISH/2026/05/02/AUTO_20260502_1200.jpg",
        "FISH/2026/05/02/LONG_20260502_1200.jpg",
        "FISH/2026/05/02/SHORT_20260502_1200.mp4",
        "PANO/2026/05/02/AUTO_20260502_1200_PANO.jpg",
        "FISH/2026/05/01/AUTO_only_file_in_dir.jpg",
    }
    for name in wanted | unwanted:
        s.put(name)
    local_excluded = {"FISH/2026/05/02/AUTO_old.jpg", "FISH/2026/05/02/LONG_old.jpg"}
    for name in local_excluded:
        (s.dest / name).parent.mkdir(parents=True, exist_ok=True)
        (s.dest / name).write_text("stale")

    assert_ok(s.run())

    expected = wanted if delete_excluded else wanted | local_excluded
    assert s.pulled() == expected
    assert not (s.dest / "FISH/2026/05/01").exists()  # --prune-empty-dirs
    assert all((s.remote / name).exists() for name in unwanted)  # stay on the source
    assert s.state.exists()


def test_wxcam_mirror_keeps_the_layout_mode_of_its_destination(make_stream) -> None:
    """`rsync -a SRC/ DEST/` would hand DEST the camera directory's mode (found in the VM)."""
    s = make_stream(
        name="wxcam", mode="mirror", patterns=[], filters=WXCAM_FILTERS, delete_excluded=True
    )
    s.put("FISH/2026/05/02/HDR_20260502_1200.jpg")
    s.remote.chmod(0o755)
    s.dest.mkdir(parents=True, exist_ok=True)
    s.dest.chmod(0o2775)

    assert_ok(s.run())

    assert s.pulled() == {"FISH/2026/05/02/HDR_20260502_1200.jpg"}
    assert oct(s.dest.stat().st_mode & 0o7777) == "0o2775"


def test_wxcam_mirror_deletes_files_gone_from_source(make_stream) -> None:
    s = make_stream(
        name="wxcam", mode="mirror", patterns=[], filters=WXCAM_FILTERS, delete_excluded=True
    )
    s.put("FISH/HDR_1.jpg")
    s.put("FISH/HDR_2.jpg")
    assert_ok(s.run())
    (s.remote / "FISH/HDR_1.jpg").unlink()

    assert_ok(s.run())

    assert s.pulled() == {"FISH/HDR_2.jpg"}


# --------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["incremental", "mirror"])
def test_unreachable_source_fails_and_changes_nothing(make_stream, mode: str) -> None:
    s = make_stream(mode=mode, filters=WXCAM_FILTERS, delete_excluded=True)
    s.config["ssh"]["port"] = sshd.free_port()  # nothing listens there
    s.write_config()
    s.put(f"{CL61}new.nc")
    s.state.parent.mkdir(parents=True)
    s.state.write_text("1000\n")
    os.utime(s.state, (1000, 1000))
    s.dest.mkdir(parents=True)
    (s.dest / "AUTO_local.jpg").write_text("local")
    (s.dest / f"{CL61}local.nc").write_text("local")

    result = s.run()

    assert result.returncode == 1, result.stderr
    assert "state not advanced" in result.stderr
    assert s.state.read_text() == "1000\n"
    assert s.state.stat().st_mtime == 1000
    assert s.pulled() == {"AUTO_local.jpg", f"{CL61}local.nc"}
    left = {p.name for p in s.state.parent.iterdir()}
    assert left == {s.state.name, s.lock.name}  # no temp file left beside the state


def test_rsync_failure_after_listing_keeps_state(make_stream) -> None:
    s = make_stream(rsync_options=["--no-such-rsync-option"])
    s.put(f"{CL61}new.nc")

    result = s.run()

    assert result.returncode == 1
    assert "rsync failed" in result.stderr
    assert not s.state.exists()
    assert s.pulled() == set()


def test_concurrent_run_is_refused(make_stream) -> None:
    s = make_stream()
    s.put(f"{CL61}new.nc")
    s.lock.parent.mkdir(parents=True)
    with s.lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = s.run()

    assert result.returncode == 75
    assert result.stderr == f"aurora-source-sync: cl61: another run holds {s.lock}\n"
    assert s.pulled() == set()
    assert not s.state.exists()


def test_state_directory_missing_is_one_line_naming_the_fix(make_stream, tmp_path: Path) -> None:
    """/data not mounted: the state directory (a link onto it) dangles; no traceback,
    nothing pulled."""
    s = make_stream()
    s.put(f"{CL61}new.nc")
    s.lock.parent.parent.mkdir(parents=True, exist_ok=True)
    s.lock.parent.symlink_to(tmp_path / "unmounted" / "state")

    result = s.run()

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "cannot open lock file" in result.stderr and "data volume is mounted" in result.stderr
    assert s.pulled() == set()


def test_stream_name_is_derived_from_symlink_name(make_stream, tmp_path: Path) -> None:
    s = make_stream(
        name="asfs-fast-sonic", patterns=["aurora_asfs_data_fast_sonic_????????????.dat"]
    )
    s.put("aurora_asfs_data_fast_sonic_202605021200.dat")
    link = tmp_path / "bin" / "aurora-asfs-fast-sonic-sync"
    link.parent.mkdir()
    link.symlink_to(PROGRAM)

    result = s.run(argv=[str(link)], env={"AURORA_SOURCE_SYNC_CONFIG_DIR": str(s.config_dir)})

    assert_ok(result)
    assert "asfs-fast-sonic:" in result.stdout
    assert s.pulled() == {"aurora_asfs_data_fast_sonic_202605021200.dat"}


def test_program_name_without_stream_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(PROGRAM), "--config-dir", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "no STREAM" in result.stderr


# --------------------------------------------------------------------------
# Config validation
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (drop("source_dir"), "'source_dir'"),
        (set_key("dest_dir", "relative/raw"), "'dest_dir'"),
        (set_key("mode", "copy"), "'mode'"),
        (set_key("patterns", []), "'patterns'"),
        (set_key("lookback_days", "10"), "'lookback_days'"),
        (set_key("start_fresh", 1), "'start_fresh'"),
        (lambda c: c.update(stamp_regex=r"_\d{12}", min_stamp="1"), "'stamp_regex'"),
        (lambda c: c.update(stamp_regex=r"_(\d{12}", min_stamp="1"), "'stamp_regex'"),
        (set_key("max_delete", -1), "'max_delete'"),
        (set_key("source_host", "-oProxyCommand=x"), "'source_host'"),
        (set_key("sourcedir", "/typo"), "'sourcedir'"),
        (set_ssh("port", "22"), "'ssh.port'"),
        (lambda c: c["ssh"].pop("known_hosts"), "'ssh.known_hosts'"),
    ],
)
def test_bad_config_is_a_one_line_error_naming_file_and_key(
    make_stream, mutate: Callable[[dict[str, Any]], None], key: str
) -> None:
    s = make_stream()
    mutate(s.config)
    path = s.write_config()

    result = s.run()

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert str(path) in result.stderr and key in result.stderr, result.stderr
    assert not s.lock.exists() and not s.state.exists()


@pytest.mark.parametrize("content", [None, "{not json", "[]"])
def test_missing_or_unparsable_config_is_a_one_line_error(make_stream, content) -> None:
    s = make_stream()
    path = s.config_dir / "cl61.json"
    if content is None:
        path.unlink()
    else:
        path.write_text(content)

    result = s.run()

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(path) in result.stderr, result.stderr


# --------------------------------------------------------------------------
# Windows that miss nothing, runs that never hang, bounded mirror deletes
# --------------------------------------------------------------------------

LAG = 3600
# The source host's clock runs an hour behind this one: `date` there says so,
# and the files it writes carry its (lagging) time.
LAGGING_CLOCK = f"""\
#!/bin/sh
bin=$(mktemp -d)
printf '#!/bin/sh\\necho $(( $(/bin/date +%%s) - {LAG} ))\\n' > "$bin/date"
chmod +x "$bin/date"
PATH="$bin:$PATH" /bin/sh -c "$SSH_ORIGINAL_COMMAND"
status=$?
rm -rf "$bin"
exit $status
"""


@pytest.fixture
def lagging_server(tmp_path: Path) -> Iterator[Any]:
    """A source host whose clock lags this host's by LAG seconds."""
    with sshd.running_sshd(tmp_path / "lagging") as servers:
        server = servers[0]
        wrapper = tmp_path / "lagging-clock"
        wrapper.write_text(LAGGING_CLOCK)
        wrapper.chmod(0o755)
        keys = server.workdir / "authorized_keys"
        keys.write_text(f'command="{wrapper}" {keys.read_text()}')
        yield server


@pytest.mark.parametrize("overlap", [600, 0])
def test_window_reference_time_comes_from_the_source_host(
    make_stream, lagging_server, overlap: int
) -> None:
    s = make_stream(server=lagging_server, overlap=overlap, lookback_days=None)
    s.state.parent.mkdir(parents=True)
    s.state.write_text(f"{int(time.time()) - LAG - 7200}\n")

    assert_ok(s.run())
    now_here = int(time.time())
    # The state is the source's "now", an hour behind this host's.
    assert now_here - LAG - 60 <= s.state_epoch() <= now_here - LAG + 1

    # Written on the source after that run, stamped by its clock; its mtime also
    # lags a few minutes behind the run's reference time (slow to be closed).
    s.put(f"{CL61}lagging.nc", age=LAG + 120)
    result = s.run()

    assert_ok(result)
    if overlap:
        assert s.pulled() == {f"{CL61}lagging.nc"}
    else:  # without the overlap the window misses it: what the overlap is for
        assert s.pulled() == set()


def test_stalled_source_fails_within_its_timeout_then_next_run_succeeds(
    make_stream, server
) -> None:
    with stalling_proxy(server.port) as proxy:
        s = make_stream()
        s.config["ssh"]["port"] = proxy.port
        s.config["timeouts"].update(connect=2, alive_interval=1, alive_count=2, io=3)
        s.write_config()
        key = server.known_hosts.read_text().split(" ", 1)[1]
        known = s.config_dir / "known_hosts"
        known.write_text(f"[{sshd.HOST}]:{proxy.port} {key}")
        s.config["ssh"]["known_hosts"] = str(known)
        s.write_config()
        s.put(f"{CL61}new.nc")

        started = time.monotonic()
        result = s.run()
        elapsed = time.monotonic() - started

        assert result.returncode == 1, result.stderr
        assert elapsed < 10, elapsed
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("aurora-source-sync: cl61: ") and "fix: " in last
        assert "state not advanced" in last
        assert not s.state.exists() and s.pulled() == set()

        proxy.stalling = False
        assert_ok(s.run())
        assert s.pulled() == {f"{CL61}new.nc"}


STALL_RSYNC = """\
#!/bin/sh
case "$SSH_ORIGINAL_COMMAND" in
  rsync*) sleep 60; exit 1 ;;
esac
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
"""


def test_rsync_that_stalls_after_login_times_out(make_stream, tmp_path: Path) -> None:
    with sshd.running_sshd(tmp_path / "stall-rsync") as servers:
        server = servers[0]
        wrapper = tmp_path / "stall-rsync.sh"
        wrapper.write_text(STALL_RSYNC)
        wrapper.chmod(0o755)
        keys = server.workdir / "authorized_keys"
        keys.write_text(f'command="{wrapper}" {keys.read_text()}')
        s = make_stream(server=server)
        s.config["timeouts"].update(io=3)
        s.write_config()
        s.put(f"{CL61}new.nc")

        started = time.monotonic()
        result = s.run()

        assert result.returncode == 1
        assert time.monotonic() - started < 20
        assert "rsync failed (exit 30)" in result.stderr  # rsync's own I/O timeout
        assert not s.state.exists()


def test_wxcam_mirror_deletions_are_bounded(make_stream) -> None:
    s = make_stream(name="wxcam", max_delete=2)
    for i in range(4):
        s.put(f"FISH/HDR_{i}.jpg")
    assert_ok(s.run())
    for i in range(3):  # the camera directory empties: a bad filter, a pruned source
        (s.remote / f"FISH/HDR_{i}.jpg").unlink()

    result = s.run()

    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    fix = f"`runuser -u {getpass.getuser()} -- aurora-wxcam-sync --max-delete N`"
    assert fix in line and "fix: " in line
    assert len(s.pulled()) == 2  # two deleted, then rsync stopped

    assert_ok(s.run("--max-delete", "5"))
    assert s.pulled() == {"FISH/HDR_3.jpg"}
