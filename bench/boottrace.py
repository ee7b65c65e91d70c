"""Where a boot's seconds go (issue 14 goal 3): boot one image under QEMU as
bench/run.py does and write a timeline of it. A benchmark, not a test.

    python bench/boottrace.py [IMAGE_DIR] [--out DIR] [--append ARGS] [--cpus N]

Each console line with the host's seconds since QEMU started; the harness's own
boot to ssh and to settled (as bench/run.py measures them); then from the guest:
systemd-analyze, blame, critical-chain, and the journal with monotonic times.
Everything goes to DIR (timeline.txt, journal.txt, analyze.txt, figures.json); the
summary is printed. No probe of its own knocks on sshd: sshd counts each connection
closed before authenticating against its source (slirp's 10.0.2.2, the harness's
too) and drops connections past MaxStartups, so a probe would delay the figure.
Run it under `flock /tmp/aurora-heavy.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.image.store import newest_image  # noqa: E402
from builder.paths import Paths  # noqa: E402
from builder.spec.model import load_spec  # noqa: E402
from builder.vm.disks import scratch_volumes, volume_labels  # noqa: E402
from builder.vm.image import BootImage  # noqa: E402
from builder.vm.machine import Machine  # noqa: E402

GUEST_COMMANDS = {
    "analyze": "systemd-analyze",
    "blame": "systemd-analyze blame --no-pager | head -40",
    "chain_ssh": "systemd-analyze critical-chain --no-pager ssh.service sshd.service 2>&1",
    "chain_default": "systemd-analyze critical-chain --no-pager",
    "failed": "systemctl --failed --no-legend --no-pager",
    "jobs": "systemctl list-jobs --no-pager",
}


class ConsoleClock(threading.Thread):
    """Stamps each new console line with the seconds since ``start``."""

    def __init__(self, path: Path, start: float) -> None:
        super().__init__(daemon=True)
        self.path, self.start_at = path, start
        self.lines: list[tuple[float, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        offset, partial = 0, b""
        while not self.stop.is_set():
            try:
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            now = time.perf_counter() - self.start_at
            offset += len(chunk)
            *done, partial = (partial + chunk).split(b"\n")
            for line in done:
                self.lines.append((now, line.decode("utf-8", "replace").rstrip("\r")))
            self.stop.wait(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("image", nargs="?", type=Path, help="an image directory (default newest)")
    parser.add_argument("--spec", type=Path, default=REPO / "hosts" / "aurora.yml")
    parser.add_argument("--out", type=Path, default=Path("/tmp/boottrace"))
    parser.add_argument("--append", default="", help="extra kernel command line")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--no-volumes", action="store_true", help="no scratch /data, /project")
    parser.add_argument(
        "--run", action="append", default=[], help="also run this in the guest (repeatable)"
    )
    args = parser.parse_args()
    paths = Paths.from_env()
    image_dir = args.image or newest_image(paths.images)
    image = BootImage.from_dir(image_dir)
    if args.append:
        image = replace(image, cmdline=f"{image.cmdline} {args.append}")
    args.out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, object] = {"image": str(image_dir), "cmdline": image.cmdline}
    with tempfile.TemporaryDirectory() as tmp:
        labels = [] if args.no_volumes else volume_labels(load_spec(args.spec))
        drives = scratch_volumes(labels, Path(tmp)) if labels else []
        vm = Machine(image, Path(tmp) / "vm", extra_drives=drives, accel="tcg", cpus=args.cpus)
        start = time.perf_counter()
        clock = ConsoleClock(vm.serial_log, start)
        with vm:
            clock.start()
            vm.wait_for_ssh(timeout=900)
            figures["boot_to_ssh_s"] = time.perf_counter() - start
            state = vm.execute("systemctl is-system-running --wait", timeout=900)[1].strip()
            figures["boot_settled_s"] = time.perf_counter() - start
            figures["settled_state"] = state
            commands = {**GUEST_COMMANDS, **{f"run{i}": c for i, c in enumerate(args.run)}}
            for name, cmd in commands.items():
                figures[name] = vm.execute(f"({cmd}) 2>&1", timeout=300)[1]
            journal = vm.execute("journalctl -b -o short-monotonic --no-pager", timeout=300)[1]
            (args.out / "journal.txt").write_text(journal)
            clock.stop.set()
            clock.join(timeout=5)
        timeline = "".join(f"{t:7.2f} {line}\n" for t, line in clock.lines)
        (args.out / "timeline.txt").write_text(timeline)
    (args.out / "analyze.txt").write_text(
        "".join(f"== {name}\n{figures[name]}\n" for name in commands)
    )
    (args.out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    for name in ("boot_to_ssh_s", "boot_settled_s"):
        value = figures[name]
        print(f"{name}: {value:.1f}" if isinstance(value, float) else f"{name}: {value}")
    print(f"settled_state: {figures['settled_state']}")
    print(figures["analyze"])
    print(figures["chain_ssh"])
    print(f"(timeline, journal, blame: {args.out})")


if __name__ == "__main__":
    main()
