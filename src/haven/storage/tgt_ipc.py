"""One request to a local ``tgtd`` over its management socket, without ``tgtadm``.

Written by hand for one reason: ``tgtadm`` takes a CHAP account's password only as an
argument, where every user of the machine can read it in the process list, and the
iSCSI secret must never be on a command line.  tgtadm itself is a thin client of this
socket (``/var/run/tgtd/socket.<control>``): a fixed ``struct tgtadm_req`` header
followed by the request's ``name=value`` parameters, NUL-terminated; tgtd answers a
``struct tgtadm_rsp`` (an error code and the answer's length).  The layout is tgt's
``usr/tgtadm.h``, unchanged from 1.0.85 (Debian 12) to 1.0.97.  Every other request
still goes through tgtadm (:mod:`haven.storage.tgt`).
"""

from __future__ import annotations

import socket
import struct

# usr/tgtadm.h: mode, op, lld[64], len, tid, sid, lun, cid, host_no, device_type,
# ac_dir, pack, force (x86_64 and aarch64: 120 bytes, no padding).
_REQ = struct.Struct("<ii64sIiQQIIIIII")
_RSP = struct.Struct("<II")
MODE_ACCOUNT = 7
OP_NEW = 0
TYPE_DISK = 0
ACCOUNT_TYPE_INCOMING = 0
NO_LUN = 2**64 - 1
SOCKET_DIR = "/var/run/tgtd"


class TgtIpcError(Exception):
    """tgtd refused the request or could not be reached; ``code`` is its error number
    (0 when it did not answer)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


def request(control: int, mode: int, op: int, params: str, timeout: float = 10.0) -> str:
    """Send one request to the tgtd with control index ``control``; its answer's text.
    ``params`` are the ``name=value`` pairs, comma-separated, as tgtadm sends them."""
    body = params.encode() + b"\0"
    header = _REQ.pack(mode, op, b"iscsi", _REQ.size + len(body), -1, 0, NO_LUN, 0, 0,
                       TYPE_DISK, ACCOUNT_TYPE_INCOMING, 0, 0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(f"{SOCKET_DIR}/socket.{control}")
            s.sendall(header + body)
            rsp = _recv_exactly(s, _RSP.size)
            err, length = _RSP.unpack(rsp)
            text = _recv_exactly(s, length - _RSP.size) if length > _RSP.size else b""
        except OSError as exc:
            raise TgtIpcError(f"tgtd (control {control}) did not answer: {exc}") from exc
    if err:
        raise TgtIpcError(f"tgtd (control {control}) refused the request (error {err})",
                          err)
    return text.rstrip(b"\0").decode(errors="replace")


def new_account(control: int, user: str, password: str, timeout: float = 10.0) -> None:
    """Create the incoming CHAP account ``user``: the password goes over the socket
    only.  It may not hold ``,`` (tgtd splits the parameters on it)."""
    if "," in user or "," in password or "=" in user:
        raise TgtIpcError("a CHAP user or password may not contain ',' (nor a user '=')")
    request(control, MODE_ACCOUNT, OP_NEW, f"user={user},password={password}", timeout)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = s.recv(n - got)
        if not chunk:
            raise OSError("tgtd closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
