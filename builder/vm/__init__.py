"""VMs: boot a built image under QEMU and drive it (tests, operators).

Where each part lives:

- ``machine``  the Machine API (start, waits, shutdown) and ``boot``; tests use it
- ``guest``    commands in the guest and waits on its state, through
               builder.host.remote.Remote (the one command runner)
- ``image``    what QEMU boots (BootImage: an image directory, or a disk via UEFI)
- ``argv``     pure: the QEMU command line, SMBIOS credentials, the ssh config
- ``qmp``      QMP, a blocking facade over qemu.qmp
- ``serial``   the console log: tail, kernel panic, sshd failure
- ``disks``    qcow2 overlay and scratch volumes; ``process``: ports, parent-death tie
- ``accel``    KVM or TCG; ``errors``: MachineError and friends (builder.errors' tree)
- ``session``  a VM kept for an operator (`aurora-image vm`), ``console`` its serial socket
"""
