"""The UKI reader finds .cmdline in a PE file and the dm-verity root hash in it."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from builder.errors import BuildError
from builder.image.uki import cmdline, pe_section, root_hash

CMDLINE = b"roothash=ab12 root=/dev/mapper/root ro\n  console=ttyS0\0"


def _pe(path: Path, sections: dict[str, bytes]) -> Path:
    """A minimal PE image: DOS stub pointer, COFF header, no optional header, sections."""
    pe_offset = 0x40
    table = pe_offset + 24
    data_start = table + 40 * len(sections)
    header = bytearray(data_start)
    struct.pack_into("<I", header, 0x3C, pe_offset)
    header[pe_offset : pe_offset + 4] = b"PE\0\0"
    struct.pack_into("<HH12xH", header, pe_offset + 4, 0x8664, len(sections), 0)
    body = b""
    for i, (name, payload) in enumerate(sections.items()):
        entry = table + 40 * i
        header[entry : entry + 8] = name.encode().ljust(8, b"\0")
        padded = payload.ljust(512, b"\0")  # raw size is aligned; virtual size is exact
        struct.pack_into(
            "<4I", header, entry + 8, len(payload), 0x1000 * (i + 1), len(padded),
            data_start + len(body),
        )  # fmt: skip
        body += padded
    path.write_bytes(bytes(header) + body)
    return path


def test_cmdline_and_root_hash(tmp_path: Path) -> None:
    uki = _pe(tmp_path / "a.efi", {".osrel": b"ID=debian\n", ".cmdline": CMDLINE})
    assert pe_section(uki, ".osrel") == b"ID=debian\n"
    line = cmdline(uki)
    assert line == "roothash=ab12 root=/dev/mapper/root ro console=ttyS0"
    assert root_hash(line) == "ab12"
    assert root_hash("root=PARTLABEL=root-x86-64 ro") is None


def test_missing_section_and_non_pe_are_build_errors(tmp_path: Path) -> None:
    uki = _pe(tmp_path / "a.efi", {".linux": b"kernel"})
    with pytest.raises(BuildError, match=r"a\.efi: the UKI has no \.cmdline section"):
        cmdline(uki)
    junk = tmp_path / "junk.efi"
    junk.write_bytes(b"MZ" + b"\0" * 100)
    with pytest.raises(BuildError, match="not a unified kernel image"):
        cmdline(junk)
