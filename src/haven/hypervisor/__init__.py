"""Hypervisor drivers: ``kvm`` (QEMU over QMP) and ``fake`` (unit tests only)."""
