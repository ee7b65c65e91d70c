"""VMs: boot a built image under QEMU and drive it (tests, operators)."""
