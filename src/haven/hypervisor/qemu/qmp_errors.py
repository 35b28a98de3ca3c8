"""The errors of :mod:`.qmp`: qemu.qmp's exceptions mapped at the boundary.

All are :class:`~haven.hypervisor.base.HypervisorError` with one sentence that names the
instance (the socket's file name without its suffix) and the socket::

    QmpError
    ├── QmpConnectError      no socket, connection refused or no greeting (VM gone or busy)
    ├── QmpCommandError      QEMU answered with an error; ``.error_class`` ("GenericError")
    ├── QmpTimeout           no answer or no such event within the timeout
    └── QmpDisconnected      QEMU closed the connection (it exited, or ``quit``)
"""

from __future__ import annotations

from pathlib import Path

from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError

from haven.hypervisor.base import HypervisorError


class QmpError(HypervisorError):
    """A QMP exchange with a VM failed."""


class QmpConnectError(QmpError):
    """The monitor could not be reached (missing socket, refused, no greeting)."""


class QmpCommandError(QmpError):
    """QEMU answered a command with an error."""

    def __init__(self, message: str, error_class: str) -> None:
        super().__init__(message)
        self.error_class = error_class


class QmpTimeout(QmpError):
    """No reply, or no awaited event, within the timeout."""


class QmpDisconnected(QmpError):
    """QEMU closed the monitor connection."""


def instance_of(path: str | Path) -> str:
    """The instance a monitor socket belongs to: its file name up to the last dot
    (``/run/haven/vm1.example.com.qmp`` -> ``vm1.example.com``)."""
    name = Path(path).name
    return name.rsplit(".", 1)[0] if "." in name else name


def map_error(exc: BaseException, path: str, label: str, what: str, timeout: float) -> QmpError:
    """The HypervisorError for a qemu.qmp (or OS) exception."""
    where = f"the QMP monitor of instance '{label}' ({path})"
    if isinstance(exc, ExecuteError):
        return QmpCommandError(f"QMP command {what} failed on instance '{label}': "
                               f"{exc.error.error.desc}", exc.error_class)
    if isinstance(exc, TimeoutError):
        return QmpTimeout(f"{where[0].upper()}{where[1:]} did not answer {what} within "
                          f"{timeout:g} s (the VM hangs, or another client holds the "
                          "monitor).")
    if isinstance(exc, ConnectError):
        cause = exc.exc if isinstance(exc.exc, BaseException) else exc
        if isinstance(cause, EOFError):
            return QmpDisconnected(f"{where[0].upper()}{where[1:]} closed the connection "
                                   "before its greeting (QEMU is exiting).")
        return QmpConnectError(f"Cannot connect to {where}: {_describe(cause)}.")
    if isinstance(exc, ExecInterruptedError | EOFError | ConnectionError):
        return QmpDisconnected(f"Instance '{label}' closed its QMP connection during {what} "
                               f"({path}); QEMU has probably exited.")
    if isinstance(exc, OSError):
        return QmpConnectError(f"Cannot connect to {where}: {_describe(exc)}.")
    return QmpError(f"QMP {what} failed on instance '{label}' ({path}): {_describe(exc)}.")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such socket (the VM does not run)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (the VM has exited)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
