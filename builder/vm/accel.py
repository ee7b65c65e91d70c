"""Choose the QEMU accelerator: KVM when it demonstrably boots a kernel, else TCG.

On the project's machines ``/dev/kvm`` exists but is nested "kvm-pvm": QEMU
starts fine and the guest then hangs silently before the kernel runs. The
presence of ``/dev/kvm`` therefore proves nothing; only a short probe boot
that reaches the kernel's "Linux version" banner does. The answer is cached
for the process so a test session pays for the probe once, and
``AURORA_ACCEL=kvm|tcg`` skips it entirely.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from pathlib import Path

from builder.retry import RetryTimeout, retry
from builder.vm.argv import QEMU

log = logging.getLogger(__name__)

ENV_VAR = "AURORA_ACCEL"

ACCEL_ARGS: dict[str, tuple[str, ...]] = {
    "kvm": ("-accel", "kvm", "-cpu", "host"),
    "tcg": ("-accel", "tcg,thread=multi", "-cpu", "max"),
}

_cached: str | None = None


class _ProbeExited(Exception):
    """QEMU exited before the banner appeared; no point waiting longer."""


def accel_args(accel: str) -> list[str]:
    """QEMU arguments for ``accel`` (``kvm`` or ``tcg``)."""
    try:
        return list(ACCEL_ARGS[accel])
    except KeyError:
        raise ValueError(
            f"unknown accelerator {accel!r}; expected one of {sorted(ACCEL_ARGS)}"
        ) from None


def forced_accel() -> str | None:
    """The accelerator forced through ``AURORA_ACCEL``, if any (validated)."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return None
    if value not in ACCEL_ARGS:
        raise ValueError(f"{ENV_VAR}={value!r}; expected one of {sorted(ACCEL_ARGS)}")
    return value


def kvm_device_usable() -> bool:
    """Cheap precondition: without a read/write ``/dev/kvm`` no probe is needed."""
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def probe_kvm(kernel: Path, initrd: Path, timeout: float = 20.0) -> bool:
    """Boot ``kernel`` under KVM and report whether it printed its banner.

    No disk is attached: the kernel banner comes long before root mounting,
    and the probe VM is killed as soon as the answer is known.
    """
    with tempfile.TemporaryDirectory(prefix="aurora-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        argv = [
            QEMU,
            "-machine", "q35",
            "-m", "512",
            "-smp", "1",
            *accel_args("kvm"),
            "-nographic",
            "-monitor", "none",
            "-no-reboot",
            "-serial", f"file:{serial}",
            "-kernel", str(kernel),
            "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1",
        ]  # fmt: skip
        with open(Path(tmp) / "qemu.log", "wb") as qemu_log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT
            )

        def banner() -> bool:
            if serial.exists() and b"Linux version" in serial.read_bytes():
                return True
            if proc.poll() is not None:
                raise _ProbeExited(f"qemu exited with {proc.returncode}")
            return False

        try:
            retry(
                banner, timeout=timeout, interval=0.25, what="KVM probe kernel banner", retry_on=()
            )
            ok = True
        except (RetryTimeout, _ProbeExited) as exc:
            log.info("KVM probe failed: %s", exc)
            ok = False
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return ok


def choose_accel(kernel: Path, initrd: Path, *, probe_timeout: float = 20.0) -> str:
    """Return ``kvm`` or ``tcg``: the env override, else the cached probe result."""
    global _cached
    forced = forced_accel()
    if forced is not None:
        return forced
    if _cached is None:
        usable = kvm_device_usable() and probe_kvm(kernel, initrd, probe_timeout)
        _cached = "kvm" if usable else "tcg"
        log.info("accelerator: %s", _cached)
    return _cached


def reset_cache() -> None:
    """Forget the probe result (tests, or after the host changed)."""
    global _cached
    _cached = None
