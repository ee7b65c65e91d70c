"""builder.vm.process: the loopback ports handed to QEMU's forwards."""

from __future__ import annotations

from builder.vm.process import free_ports


def test_free_ports_are_distinct() -> None:
    """Two forwards on one host port make QEMU refuse to start."""
    ports = free_ports(64)
    assert len(set(ports)) == 64
