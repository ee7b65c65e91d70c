"""Issue 14 goal 4's figure: `make image` on a fresh machine, as fresh as this one
can be: a clone of this checkout's HEAD (uncommitted changes are not in it) with an
empty AURORA_CACHE of its own, so mkosi, uv, the builder's venv, the tools tree,
the image's packages and wheels are all fetched and built again; the host's own
packages are already installed. Prints the setup and build seconds and the steps
mkosi printed with their start times, writes them as JSON, and removes the clone
and its cache (~5 GB) unless --keep. A benchmark: it asserts nothing. Run it under
`flock /tmp/aurora-heavy.lock` on a shared machine (about 2.5 minutes).

    python bench/cold.py [--out /tmp/cold.json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GOAL_S = 240
# What builder.image.mkosi prints for each step without a terminal, and at the end.
STEP = re.compile(r"^\s*\[\s*(?P<at>[0-9.]+)s\] ‣\s+(?P<what>.*)$")
DONE = re.compile(r"^mkosi build: done in (?P<seconds>[0-9.]+) s")


def mkosi_runs(output: str) -> list[dict[str, Any]]:
    """Each mkosi run of a build (the tools tree, then the base): its seconds and steps."""
    runs: list[dict[str, Any]] = []
    steps: list[tuple[float, str]] = []
    for line in output.splitlines():
        if step := STEP.match(line):
            steps.append((float(step["at"]), step["what"].strip()))
        elif done := DONE.match(line):
            runs.append({"seconds": float(done["seconds"]), "steps": steps})
            steps = []
    return runs


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    output = done.stdout + done.stderr
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed (exit {done.returncode}):\n{output[-3000:]}")
    return seconds, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the clone and its cache")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aurora-cold-", dir="/var/tmp"))
    try:
        clone, cache = work / "repo", work / "cache"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True, check=True
        ).stdout.strip()
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "AURORA_IMAGES")}
        env.update(AURORA_CACHE=str(cache), AURORA_BUILD_CACHE=str(cache), CI="1")
        setup_s, _ = timed(["make", "setup-image"], clone, env)
        build_s, output = timed(["make", "image"], clone, env)
        figures = {
            "commit": commit,
            "tag": (clone / "build/last-tag").read_text().strip(),
            "setup_s": round(setup_s, 1),
            "build_s": round(build_s, 1),
            "cold_make_image_s": round(setup_s + build_s, 1),
            "goal_s": GOAL_S,
            "mkosi_runs": mkosi_runs(output),
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = figures["cold_make_image_s"]
    print(
        f"cold make image at {commit[:12]}: {total:.0f} s (setup {setup_s:.1f} s, build "
        f"{build_s:.1f} s; goal {GOAL_S} s: {'met' if total <= GOAL_S else 'missed'})"
    )
    for run in figures["mkosi_runs"]:
        print(f"  mkosi {run['seconds']:.1f} s")
        for at, what in run["steps"]:
            print(f"    [{at:6.1f}s] {what[:90]}")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    if args.keep:
        print(f"kept {work}")


if __name__ == "__main__":
    main()
