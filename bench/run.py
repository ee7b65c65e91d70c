"""Print the figures that matter to an operator: render, build, rebuild, boot,
smoke suite. A benchmark, not a test: it asserts nothing and prints numbers.

    python bench/run.py [--spec hosts/aurora.yml] [--cold] [--skip-boot] [--verify]

--cold first empties the mkosi caches (the package cache stays), so the build
figure includes the tools tree and the package install.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.image import build  # noqa: E402
from builder.render import render  # noqa: E402
from builder.spec import load_spec  # noqa: E402
from builder.tools import cache_dir  # noqa: E402
from builder.vm import BootImage, Machine, scratch_volumes, volume_labels  # noqa: E402


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def bench_render(spec_path: Path, rounds: int = 20) -> None:
    times = []
    for _ in range(rounds):
        took, _ = timed(lambda: render(load_spec(spec_path)))
        times.append(took)
    print(
        f"render (load + validate + render), median of {rounds}: "
        f"{statistics.median(times) * 1000:.1f} ms"
    )


def one_line_change(spec_path: Path, workdir: Path) -> Path:
    """A copy of the spec with one description changed (app path kept valid)."""
    (workdir / "hosts").mkdir()
    (workdir / "app").symlink_to(REPO / "app")
    text = spec_path.read_text()
    changed = text.replace(
        "description: Aurora pull fresh CL61 raw NetCDF files from source host",
        f"description: Aurora pull fresh CL61 raw NetCDF files (bench {time.time():.0f})",
    )
    assert changed != text, "bench expects the CL61 stream description in the spec"
    out = workdir / "hosts" / spec_path.name
    out.write_text(changed)
    return out


def bench_boot(image_dir: Path, spec_path: Path) -> None:
    labels = volume_labels(load_spec(spec_path))
    with tempfile.TemporaryDirectory() as tmp:
        drives = scratch_volumes(labels, Path(tmp))
        vm = Machine(
            BootImage.from_dir(image_dir),
            Path(tmp),
            host_forwards={"http": 80},
            extra_drives=drives,
        )
        start = time.perf_counter()
        with vm:  # starts QEMU
            vm.wait_for_ssh(timeout=900)
            ssh = time.perf_counter() - start
            vm.wait_for_unit("aurora-dashboard.service", timeout=900)
            vm.wait_for_open_port(5006, timeout=900)
            ready = time.perf_counter() - start
            print(f"boot to ssh: {ssh:.0f} s; boot to dashboard listening: {ready:.0f} s")
            took, _ = timed(vm.shutdown)
            print(f"QMP powerdown to exit: {took:.1f} s")


def bench_smoke(image_dir: Path) -> None:
    took, proc = timed(
        subprocess.run,
        [sys.executable, "-m", "pytest", "-q", "tests/vm"],
        cwd=REPO,
        env={**__import__("os").environ, "AURORA_IMAGE": str(image_dir)},
        capture_output=True,
        text=True,
    )
    last = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"smoke suite incl. boot: {took:.0f} s ({last})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", type=Path, default=REPO / "hosts" / "aurora.yml")
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--skip-boot", action="store_true")
    parser.add_argument(
        "--verify", action="store_true", help="also rebuild in an empty cache and compare"
    )
    args = parser.parse_args()
    spec_path = args.spec.resolve()

    bench_render(spec_path)
    if args.cold:
        for name in ("mkosi-cache", "out"):
            shutil.rmtree(cache_dir() / name, ignore_errors=True)
    took, image = timed(build, spec_path, progress=False)
    label = "cold build" if args.cold else "build"
    print(f"{label}: {took:.0f} s ({'reused' if image.reused else 'built'} {image.tag})")
    took, again = timed(build, spec_path, progress=False)
    print(f"build with unchanged inputs: {took:.1f} s (reused={again.reused})")
    with tempfile.TemporaryDirectory() as tmp:
        took, changed = timed(build, one_line_change(spec_path, Path(tmp)), progress=False)
        print(f"rebuild after a one-line spec change: {took:.0f} s (new tag {changed.tag})")
        shutil.rmtree(changed.path, ignore_errors=True)
    size = sum(p.stat().st_blocks * 512 for p in image.path.iterdir())
    print(f"image directory on disk: {size / 2**30:.2f} GiB")
    if not args.skip_boot:
        bench_boot(image.path, spec_path)
        bench_smoke(image.path)
    if args.verify:
        from builder.verify import format_text, verify

        took, result = timed(verify, image.tag)
        print(f"verify (rebuild in an empty build cache): {took:.0f} s")
        print(format_text(result))


if __name__ == "__main__":
    main()
