"""Read the kernel command line out of a unified kernel image (a PE binary).

mkosi puts the dm-verity root hash into the UKI's ``.cmdline`` section, so
the UKI is the one place that says how the image boots. The store keeps that
command line for direct-kernel QEMU boots and the manifest records the root
hash from it.
"""

from __future__ import annotations

import struct
from pathlib import Path

from builder.errors import BuildError


def pe_section(path: Path, name: str) -> bytes:
    """The raw bytes of one PE section (without the alignment padding)."""
    data = path.read_bytes()
    try:
        (pe,) = struct.unpack_from("<I", data, 0x3C)
        if data[pe : pe + 4] != b"PE\0\0":
            raise ValueError("no PE signature")
        count, optional_size = struct.unpack_from("<2xH12xH", data, pe + 4)
        table = pe + 24 + optional_size
        for i in range(count):
            entry = table + 40 * i
            raw_name = data[entry : entry + 8].rstrip(b"\0").decode("ascii", "replace")
            vsize, _, raw_size, raw_ptr = struct.unpack_from("<4I", data, entry + 8)
            if raw_name == name:
                return data[raw_ptr : raw_ptr + min(vsize, raw_size)]
    except (struct.error, ValueError) as exc:
        raise BuildError(f"{path}: not a unified kernel image ({exc})") from None
    raise BuildError(f"{path}: the UKI has no {name} section")


def cmdline(path: Path) -> str:
    """The UKI's kernel command line, whitespace normalised."""
    return " ".join(pe_section(path, ".cmdline").rstrip(b"\0").decode().split())


def root_hash(command_line: str) -> str | None:
    """The dm-verity root hash given as ``roothash=`` (None for an unprotected root)."""
    for word in command_line.split():
        key, _, value = word.partition("=")
        if key == "roothash":
            return value
    return None
