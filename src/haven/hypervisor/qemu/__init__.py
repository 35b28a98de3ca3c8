"""The ``kvm`` hypervisor: QEMU driven over QMP (:class:`QemuHypervisor`).

    driver.py    QemuHypervisor: start/list/stop/kill/reboot, files in the run dir
    cmdline.py   the QEMU argv of a VmSpec (pure)
    qmp.py       synchronous QMP calls, sessions and events over ``qemu.qmp``
    accel.py     what ``auto`` means here: KVM only if a probe really runs under it
"""

from haven.hypervisor.qemu.driver import QemuHypervisor

__all__ = ["QemuHypervisor"]
