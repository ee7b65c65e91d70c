"""Print the figures of issue 14 for the Aurora image and for a floor image
(bench/floor: kernel, systemd, sshd, same boot chain), each Aurora figure also
as a ratio to the floor's (FLOOR_PEER names which), and write them all to
bench/results.json. A benchmark, not a test: it asserts nothing and prints numbers.

    python bench/run.py [--spec hosts/aurora.yml] [--cold] [--skip-builds] [--skip-boot]
                        [--skip-floor] [--skip-promote] [--smoke] [--verify]
                        [--out bench/results.json]

--cold first empties the build cache's mkosi state (the package cache stays),
so the build figure includes the tools tree and the package install.
--skip-builds leaves out the config-only and app-only rebuilds; --skip-promote
the promotion downtime (bench/downtime.py: three releases on the release
suite's Glance and Nova double, three UEFI boots). Run it whole under
`flock /tmp/aurora-heavy.lock` on a shared machine: it builds and boots.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.image import mkosi, tools_tree, uki  # noqa: E402
from builder.image.build import build  # noqa: E402
from builder.image.debian import apt_sandbox  # noqa: E402
from builder.image.sizes import allocated  # noqa: E402
from builder.image.store import DISK, read_manifest  # noqa: E402
from builder.paths import Paths  # noqa: E402
from builder.render.engine import render  # noqa: E402
from builder.spec.model import HostSpec, load_spec  # noqa: E402
from builder.vm.disks import scratch_volumes, volume_labels  # noqa: E402
from builder.vm.image import BootImage  # noqa: E402
from builder.vm.machine import Machine  # noqa: E402

FLOOR = REPO / "bench" / "floor"
# Goals of issue 14 (seconds, bytes): printed beside each figure.
GOALS = {
    "cold_build_s": 240,
    "config_change_build_s": 20,
    "app_change_build_s": 60,
    "boot_to_ssh_s": 30,
    "boot_settled_s": 45,
    "disk_allocated_bytes": 1.5 * 2**30,
    "qcow2_compressed_bytes": 500e6,
}
# The floor figure each Aurora figure is divided by: the same step on the floor
# image (a rebuild is the floor's forced incremental build; the dashboard and a
# release's downtime compare with the floor's only service answering).
FLOOR_PEER = {
    "cold_build_s": "cold_build_s",
    "config_change_build_s": "rebuild_s",
    "app_change_build_s": "rebuild_s",
    "disk_allocated_bytes": "disk_allocated_bytes",
    "qcow2_compressed_bytes": "qcow2_compressed_bytes",
    "boot_to_ssh_s": "boot_to_ssh_s",
    "boot_settled_s": "boot_settled_s",
    "boot_to_dashboard_s": "boot_to_ssh_s",
    "powerdown_s": "powerdown_s",
    "promote_downtime_s": "rebuild_to_ssh_s",
    "rollback_downtime_s": "rebuild_to_ssh_s",
}
PROMOTION = "bench promotion"  # the config-only change of the image a release promotes


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def bench_render(spec_path: Path, rounds: int = 20) -> float:
    times = [timed(lambda: render(load_spec(spec_path)))[0] for _ in range(rounds)]
    return statistics.median(times)


def changed_spec(spec_path: Path, workdir: Path, marker: str = "") -> Path:
    """A copy of the spec with one description changed (a config-only change);
    a fixed `marker` gives the same image on every run, none a new one."""
    (workdir / "hosts").mkdir(parents=True, exist_ok=True)
    # Always this checkout's app: a link left by a run from another checkout may dangle.
    (workdir / "app").unlink(missing_ok=True)
    (workdir / "app").symlink_to(REPO / "app")
    text = spec_path.read_text()
    marker = marker or f"bench {time.time():.0f}"
    changed = text.replace(
        "description: Aurora pull fresh CL61 raw NetCDF files from source host",
        f"description: Aurora pull fresh CL61 raw NetCDF files ({marker})",
    )
    assert changed != text, "bench expects the CL61 stream description in the spec"
    out = workdir / "hosts" / spec_path.name
    out.write_text(changed)
    return out


def changed_app(spec_path: Path, workdir: Path) -> Path:
    """A copy of the spec whose app has one changed line (an app-only change)."""
    (workdir / "hosts").mkdir()
    shutil.copytree(REPO / "app", workdir / "app", ignore=shutil.ignore_patterns("__pycache__"))
    entry = workdir / "app" / load_spec(spec_path).dashboard.entry
    entry.write_text(entry.read_text() + f"\n# bench {time.time():.0f}\n")
    out = workdir / "hosts" / spec_path.name
    shutil.copy2(spec_path, out)
    return out


def to_qcow2(disk: Path, out: Path) -> Path:
    """The disk as a compressed qcow2 (what an upload to Glance carries)."""
    subprocess.run(["qemu-img", "convert", "-c", "-O", "qcow2", str(disk), str(out)], check=True)
    return out


def qcow2_size(disk: Path) -> int:
    """Bytes of the disk as a compressed qcow2."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        return to_qcow2(disk, Path(tmp) / "disk.qcow2").stat().st_size


def boot(image: BootImage, drives_for: list[str], dashboard_port: int | None) -> dict[str, Any]:
    """Seconds from QEMU start to ssh, to every unit settled, to the dashboard listening."""
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        drives = scratch_volumes(drives_for, Path(tmp)) if drives_for else []
        vm = Machine(image, Path(tmp), extra_drives=drives)
        start = time.perf_counter()
        with vm:
            vm.wait_for_ssh(timeout=900)
            figures["boot_to_ssh_s"] = time.perf_counter() - start
            state = vm.execute("systemctl is-system-running --wait", timeout=900)[1].strip()
            figures["boot_settled_s"] = time.perf_counter() - start
            figures["settled_state"] = state
            if dashboard_port is not None:
                vm.wait_for_open_port(dashboard_port, timeout=900)
                figures["boot_to_dashboard_s"] = time.perf_counter() - start
            figures["systemd_analyze"] = vm.execute("systemd-analyze", timeout=120)[1].strip()
            figures["powerdown_s"] = timed(vm.shutdown)[0]
    return figures


def build_floor(spec: HostSpec, log: Path, paths: Paths) -> tuple[float, BootImage, Path]:
    """Build the floor image with mkosi (Debian sources as the spec's); reuse the
    Aurora build's tools tree (builder.image.tools_tree)."""
    work = paths.build_cache / "floor"
    sandbox = apt_sandbox(spec, work / "sandbox")
    output = work / "out"
    argv = [
        "--directory", str(FLOOR),
        "--sandbox-tree", str(sandbox),
        "--seed", "f1002000-0000-4000-8000-000000000000",
        "--source-date-epoch", "1761955200",
        "--cache-directory", str(work / "cache"),
        "--workspace-directory", str(paths.build_cache / "workspace"),
        "--output-directory", str(output),
    ]  # fmt: skip
    tools = tools_tree.ensure(paths.repo, paths.cache, paths.build_cache, progress=False)
    argv += ["--tools-tree", str(tools)]
    took = mkosi.run_argv([*argv, "--force", "build"], log, paths.cache, progress=False)
    image = BootImage(
        disk=output / "floor.raw",
        kernel=output / "floor.vmlinuz",
        initrd=output / "floor.initrd",
        cmdline=uki.cmdline(output / "floor.efi"),
    )
    return took, image, output


def report(name: str, value: float, floor: dict[str, Any], unit: str = "s") -> str:
    """One figure: its goal and verdict, and its ratio to the floor's peer figure."""
    shown = f"{value / 1e6:.0f} MB" if unit == "B" else f"{value:.1f} s"
    goal = GOALS.get(name)
    if goal is not None:
        goal_text = f"{goal / 1e6:.0f} MB" if unit == "B" else f"{goal:g} s"
        shown += f" (goal {goal_text}: {'met' if value <= goal else 'missed'})"
    peer = FLOOR_PEER.get(name)
    base = floor.get(peer) if peer else None
    if isinstance(base, int | float) and base:
        base_text = f"{base / 1e6:.0f} MB" if unit == "B" else f"{base:.1f} s"
        shown += f"; floor {peer} {base_text}, ratio {value / base:.2f}"
    return f"{name}: {shown}"


def ratios(aurora: dict[str, Any], floor: dict[str, Any]) -> dict[str, float]:
    """Each Aurora figure over its floor peer, where the run measured both."""
    out = {}
    for name, peer in FLOOR_PEER.items():
        value, base = aurora.get(name), floor.get(peer)
        if isinstance(value, int | float) and isinstance(base, int | float) and base:
            out[name] = round(value / base, 3)
    return out


def promotion(
    spec_path: Path, image_dir: Path, paths: Paths, floor_disk: Path | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Goal 7 (bench/downtime.py): A is the image just built, B the same with one
    description changed, both in a store of the bench's own; with the floor, its
    rebuild-to-ssh on the same services too. The CLI's log: bench-release/release.log
    in the build cache."""
    import downtime

    work = paths.build_cache / "bench-release"
    store = work / "images"
    image_a = downtime.stand_in(image_dir, store)
    variant = load_spec(changed_spec(spec_path, work / "spec-b", PROMOTION))
    built = build(variant, replace(paths, images=store), progress=False)
    downtime.attest_stand_in(built.path)
    for old in store.iterdir():  # earlier runs' images (their tags moved on)
        if old.is_dir() and old not in (image_a, built.path):
            shutil.rmtree(old)
    how = "reused" if built.reused else "built"
    print(f"promotion: A {image_a.name}, B {built.path.name} ({how})")
    log = work / "release.log"
    log.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        floor_qcow = to_qcow2(floor_disk, Path(tmp) / "floor.qcow2") if floor_disk else None
        return downtime.measure(
            load_spec(spec_path), image_a, built.path, Path(tmp), log, floor_qcow=floor_qcow
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", type=Path, default=REPO / "hosts" / "aurora.yml")
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--skip-builds", action="store_true", help="no config/app rebuilds")
    parser.add_argument("--skip-boot", action="store_true")
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--skip-promote", action="store_true", help="no promotion downtime")
    parser.add_argument("--smoke", action="store_true", help="also time the smoke suite")
    parser.add_argument("--verify", action="store_true", help="also rebuild in an empty cache")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    args = parser.parse_args()
    paths = Paths.from_env()  # the edge: this run's store and caches
    spec_path = args.spec.resolve()
    spec = load_spec(spec_path)
    aurora: dict[str, Any] = {}
    floor: dict[str, Any] = {}

    aurora["render_s"] = bench_render(spec_path)
    print(f"render (load + validate + render), median of 20: {aurora['render_s'] * 1000:.1f} ms")
    if args.cold:
        for name in ("mkosi-cache", "out", "venvs", "floor", "tools"):
            shutil.rmtree(paths.build_cache / name, ignore_errors=True)
    took, image = timed(build, spec, paths, progress=False)
    aurora["cold_build_s" if args.cold else "build_s"] = took
    print(
        f"{'cold build' if args.cold else 'build'}: {took:.0f} s "
        f"({'reused' if image.reused else 'built'} {image.tag})"
    )
    aurora["unchanged_build_s"] = timed(build, spec, paths, progress=False)[0]
    changes = () if args.skip_builds else (
        ("config_change_build_s", changed_spec),
        ("app_change_build_s", changed_app),
    )  # fmt: skip
    for name, make in changes:
        with tempfile.TemporaryDirectory() as tmp:
            variant = load_spec(make(spec_path, Path(tmp)))
            took, changed = timed(build, variant, paths, progress=False)
            aurora[name] = took
            shutil.rmtree(changed.path, ignore_errors=True)
    manifest = read_manifest(image.path)
    disk = image.path / DISK
    aurora["disk_allocated_bytes"] = allocated(disk)
    aurora["qcow2_compressed_bytes"] = qcow2_size(disk)
    aurora["sizes"] = manifest.sizes or {}

    floor_image = None
    if not args.skip_floor:
        with tempfile.TemporaryDirectory() as tmp:
            took, floor_image, _ = build_floor(spec, Path(tmp) / "floor.log", paths)
        floor["cold_build_s" if args.cold else "rebuild_s"] = took
        print(f"floor {'cold build' if args.cold else 'rebuild'}: {took:.0f} s")
        floor["disk_allocated_bytes"] = allocated(floor_image.disk)
        floor["qcow2_compressed_bytes"] = qcow2_size(floor_image.disk)
        if not args.skip_boot:
            floor.update(boot(floor_image, [], None))
    if not args.skip_boot:
        aurora_image = BootImage.from_dir(image.path)
        aurora.update(boot(aurora_image, volume_labels(spec), spec.dashboard.port))
    if not args.skip_promote:
        floor_disk = floor_image.disk if floor_image is not None else None
        released, floor_released = promotion(spec_path, image.path, paths, floor_disk)
        aurora.update(released)
        floor.update(floor_released)
    if args.smoke:
        took, proc = timed(
            subprocess.run,
            [sys.executable, "-m", "pytest", "-q", "tests/vm"],
            cwd=REPO,
            env={**os.environ, "AURORA_IMAGE": str(image.path)},
            capture_output=True,
            text=True,
        )
        aurora["smoke_suite_s"] = took
        last = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"smoke suite incl. boot: {took:.0f} s ({last})")
    if args.verify:
        from builder.image.verify import format_text, verify

        took, result = timed(verify, image.tag, paths)
        aurora["verify_s"] = took
        aurora["reproducible"] = result.identical
        print(format_text(result))

    for name, value in aurora.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            unit = "B" if name.endswith("_bytes") else "s"
            print(report(name, value, floor, unit))
    for name in ("settled_state", "systemd_analyze"):
        if name in aurora:
            print(f"aurora {name}: {aurora[name]}")
        if name in floor:
            print(f"floor {name}: {floor[name]}")
    results = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "tag": image.tag,
        "goals": GOALS,
        "floor_peer": FLOOR_PEER,
        "aurora": aurora,
        "floor": floor,
        "ratios": ratios(aurora, floor),
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
