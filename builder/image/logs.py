"""The logs of one image, found in one place: `aurora-image logs TAG`.

An image's story is spread over three steps: the build (mkosi's output,
`images/<tag>/build.log`), the last smoke-suite run (its report
`smoke.log` and the console of the VM it booted, `smoke-serial.log`, both
kept beside the image by tests/vm/conftest.py) and a VM an operator booted
(`<cache>/vms/<tag>/serial.log`). This module names those files and reads
them; nothing here writes a log except `write_smoke_log`.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from builder.image.store import BUILD_LOG
from builder.render.tree import atomic_write

SMOKE_LOG = "smoke.log"
SMOKE_SERIAL = "smoke-serial.log"
SERIAL = "serial.log"  # builder.vm.machine's name for a VM's console log in its workdir
KINDS = ("build", "smoke", "serial")


@dataclass(frozen=True)
class Log:
    """One log of an image: which step wrote it and where it is."""

    kind: str  # build | smoke | serial
    what: str
    path: Path

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    def to_json(self) -> dict[str, object]:
        stat = self.path.stat() if self.exists else None
        return {
            "kind": self.kind,
            "what": self.what,
            "path": str(self.path),
            "exists": stat is not None,
            "bytes": stat.st_size if stat else None,
            "modified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stat.st_mtime))
            if stat
            else None,
        }


def image_logs(image_dir: Path, vms_dir: Path) -> list[Log]:
    """Every log there can be for the image in ``image_dir``, in the order they happen."""
    return [
        Log("build", "build (mkosi)", image_dir / BUILD_LOG),
        Log("smoke", "last smoke-suite run", image_dir / SMOKE_LOG),
        Log("serial", "serial console of the smoke suite's VM", image_dir / SMOKE_SERIAL),
        Log("serial", "serial console of `aurora-image vm`", vms_dir / image_dir.name / SERIAL),
    ]


def read_log(path: Path, tail: int | None = None) -> str:
    """The log's text (its last ``tail`` lines), decoded leniently, console escapes dropped."""
    from builder.vm.serial import tail_text

    if tail is not None:
        return tail_text(path, tail)
    return tail_text(path, 10**9)


def write_smoke_log(image_dir: Path, report: str, serial_log: Path | None) -> None:
    """Keep the smoke suite's report (and its VM's console) beside the image it tested."""
    atomic_write(image_dir / SMOKE_LOG, report.encode())
    if serial_log is not None and serial_log.is_file():
        partial = image_dir / f".{SMOKE_SERIAL}.partial"
        shutil.copyfile(serial_log, partial)
        partial.replace(image_dir / SMOKE_SERIAL)
    else:  # a run that booted nothing: an older run's console would mislead
        (image_dir / SMOKE_SERIAL).unlink(missing_ok=True)
