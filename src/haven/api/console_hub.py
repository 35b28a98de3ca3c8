"""One connection to a VM's serial console, shared by everyone watching it.

QEMU's console socket (``-chardev socket,server``) serves one client at a time: a
second viewer (the dashboard's terminal while ``gnt-instance console`` runs) would
wait, silent, until the first leaves.  The hub holds the single connection while at
least one viewer is attached, copies what the guest prints to every viewer, and passes
what any viewer types to the guest, as a serial line shared by several terminals
does.  It lets go of the socket when the last viewer leaves, so that a direct client
(``gnt-instance console --show-cmd``'s socat) can use it again.

Everything runs on the API server's event loop: no locks beyond asyncio's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)

CHUNK = 65536
BACKLOG = 1024  # chunks a viewer may fall behind before it is dropped

_hubs: dict[str, Hub] = {}


class Viewer:
    """One attached client: ``get()`` the guest's output (None once it ended),
    ``write()`` input, ``leave()`` when done."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(BACKLOG)

    async def get(self) -> bytes | None:
        return await self.queue.get()

    async def write(self, data: bytes) -> None:
        await self.hub.write(data)

    def leave(self) -> None:
        self.hub.leave(self)


class Hub:
    def __init__(self, path: str) -> None:
        self.path = path
        self.viewers: set[Viewer] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task[None] | None = None

    async def _open(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(self.path)
        self._pump = asyncio.ensure_future(self._copy_out(reader))

    async def _copy_out(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(CHUNK):
                for v in list(self.viewers):
                    try:
                        v.queue.put_nowait(data)
                    except asyncio.QueueFull:
                        # A viewer that stopped reading must not stall the others.
                        log.info("console %s: dropping a viewer %d chunks behind",
                                 self.path, BACKLOG)
                        self._end(v)
        except OSError as exc:
            log.debug("console %s: %s", self.path, exc)
        # The guest's end (QEMU stopped): every viewer is told, the hub goes.
        for v in list(self.viewers):
            self._end(v)
        self._close()

    def _end(self, v: Viewer) -> None:
        self.viewers.discard(v)
        while True:  # make room for the end marker
            try:
                v.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                v.queue.get_nowait()

    async def write(self, data: bytes) -> None:
        if self._writer is None:
            raise ConnectionResetError(f"the console {self.path} is closed")
        self._writer.write(data)
        await self._writer.drain()

    def leave(self, v: Viewer) -> None:
        self.viewers.discard(v)
        if not self.viewers:
            self._close()

    def _close(self) -> None:
        if _hubs.get(self.path) is self:
            del _hubs[self.path]
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()
        if self._writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.close()
            self._writer = None


async def join(path: str) -> Viewer:
    """Attach to the console at ``path``, opening it if nobody watches it yet."""
    hub = _hubs.get(path)
    if hub is None:
        hub = Hub(path)
        _hubs[path] = hub  # before the await: a viewer arriving meanwhile shares it
        try:
            await hub._open()
        except BaseException:
            if _hubs.get(path) is hub:
                del _hubs[path]
            raise
    elif hub._writer is None:
        # Another viewer's open is in flight: wait for it rather than open twice.
        while hub._writer is None and _hubs.get(path) is hub:
            await asyncio.sleep(0.01)
        if _hubs.get(path) is not hub:
            return await join(path)
    viewer = Viewer(hub)
    hub.viewers.add(viewer)
    return viewer
