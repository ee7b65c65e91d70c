"""Thin adapter around mkosi: one function, one subprocess, one log."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from builder import progress as live
from builder.errors import BuildError
from builder.tools import mkosi_command, uv_binary


@dataclass(frozen=True)
class MkosiJob:
    """Everything one mkosi build needs beyond the repo's static config."""

    repo: Path
    extra_tree: Path
    stage: Path
    output_dir: Path
    packages: tuple[str, ...]
    environment: dict[str, str]
    seed: str
    source_date_epoch: int
    # Tools and downloads (builder.paths.Paths.cache), and mkosi's own cache,
    # workspace and venvs (Paths.build_cache, what `verify` starts empty).
    cache: Path
    build_cache: Path
    sandbox_trees: tuple[Path, ...] = ()
    # The locked build's repository (builder.image.debrepo): apt sees only it.
    local_mirror: Path | None = None
    # The programs mkosi runs (builder.image.tools_tree); None: the build host's.
    tools_tree: Path | None = None

    def argv(self) -> list[str]:
        cache, build_cache = self.cache, self.build_cache
        sources = {
            self.stage: "stage",
            uv_binary(cache).parent: "uvbin",
            cache / "uv": "uvcache",
            # Venvs by lock: in the build cache, so `verify` (empty cache) reinstalls.
            build_cache / "venvs": "venvcache",
        }
        argv = [
            "--directory", str(self.repo),
            "--extra-tree", str(self.extra_tree),
            "--build-sources", ",".join(f"{src}:{dst}" for src, dst in sources.items()),
            "--seed", self.seed,
            "--source-date-epoch", str(self.source_date_epoch),
            "--cache-directory", str(build_cache / "mkosi-cache"),
            "--package-cache-dir", str(cache / "mkosi-pkgs"),
            "--workspace-directory", str(build_cache / "workspace"),
            "--output-directory", str(self.output_dir),
        ]  # fmt: skip
        for tree in self.sandbox_trees:
            argv += ["--sandbox-tree", str(tree)]
        if self.local_mirror is not None:
            argv += ["--local-mirror", f"file://{self.local_mirror}"]
        if self.tools_tree is not None:
            argv += ["--tools-tree", str(self.tools_tree)]
        if self.packages:
            argv += ["--package", ",".join(self.packages)]
        # mkosi hands systemd-repart only its configured environment, split at spaces:
        # ext4's directory hash seed is random unless given, so derive it from the inputs.
        seed = {"SYSTEMD_REPART_MKFS_OPTIONS_EXT4": f"-Ehash_seed={self.seed}"}
        environment = {**self.environment, **seed}
        for key, value in sorted(environment.items()):
            argv += ["--environment", f"{key}={value}"]
        return [*argv, "--force", "build"]


def run(job: MkosiJob, log_path: Path, *, progress: bool = True) -> float:
    """Run the build, streaming its output to `log_path`; return seconds taken.

    On a terminal mkosi's current step ("‣ ..." lines) and the elapsed time
    show live; ``progress`` prints each step as a line where there is no live
    display (a pipe, CI).
    """
    for path in (
        job.cache / "uv",
        job.build_cache / "venvs",
        job.build_cache / "workspace",
        job.output_dir,
    ):
        path.mkdir(parents=True, exist_ok=True)
    return run_argv(job.argv(), log_path, job.cache, progress=progress)


def run_argv(argv: list[str], log_path: Path, cache: Path, *, progress: bool = True) -> float:
    """Run mkosi (found in `cache`) with these arguments (an image job; bench's floor too)."""
    command, env_extra = mkosi_command(cache)
    env = {**os.environ, **env_extra}
    # mkosi must run with Debian's python; pyenv shims and venvs must not leak in.
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    start = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log, live.step("mkosi build") as shown:
        proc = subprocess.Popen(
            [*command, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if not line.startswith("‣"):
                continue
            shown.note(line.removeprefix("‣").strip()[:80])
            if progress and not live.enabled():
                elapsed = time.monotonic() - start
                print(f"  [{elapsed:6.1f}s] {line.rstrip()[:110]}", file=sys.stderr, flush=True)
        rc = proc.wait()
        if rc != 0:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise BuildError(f"mkosi failed (exit {rc}); full log: {log_path}\n" + "\n".join(tail))
    return time.monotonic() - start
