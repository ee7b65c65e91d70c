"""builder.vm.qmp: the blocking QMP facade against a real, device-less QEMU."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.retry import retry
from builder.vm import accel
from builder.vm.qmp import QMP

needs_qemu = pytest.mark.skipif(shutil.which(accel.QEMU) is None, reason="qemu not installed")


@needs_qemu
def test_qmp_facade_against_real_qemu(tmp_path: Path) -> None:
    """The sync QMP facade talks to a device-less QEMU (starts in well under a second)."""
    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen(
        [accel.QEMU, "-machine", "none", "-nodefaults", "-display", "none",
         "-qmp", f"unix:{sock},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    qmp = QMP("unit")
    try:
        retry(sock.exists, timeout=10, interval=0.05, what="qmp socket")
        qmp.connect(sock)
        status = qmp.execute("query-status")
        assert isinstance(status, dict)
        assert "status" in status
        with contextlib.suppress(Exception):  # QEMU may hang up before answering
            qmp.execute("quit", timeout=5)
        assert proc.wait(timeout=10) == 0
    finally:
        qmp.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
