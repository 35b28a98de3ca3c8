"""The console hub: several viewers share QEMU's single-client console socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

from haven.api import console_hub


class FakeConsole:
    """A unix socket that answers each line with ``got:<line>`` to every connection,
    and counts the connections it accepted and the ones still open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.accepted = 0
        self.open = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> asyncio.AbstractServer:
        return await asyncio.start_unix_server(self._serve, str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.writers.append(writer)
        try:
            while line := await reader.readline():
                writer.write(b"got:" + line)
                await writer.drain()
        finally:
            self.open -= 1
            writer.close()

    def hang_up(self) -> None:
        for w in self.writers:
            w.close()


async def _until(cond: object, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():  # type: ignore[operator]
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)


def test_two_viewers_share_one_connection_and_both_see_the_answer(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeConsole(tmp_path / "c.sock")
        server = await fake.start()
        a, b = await asyncio.gather(console_hub.join(str(fake.path)),
                                    console_hub.join(str(fake.path)))
        await _until(lambda: fake.accepted == 1)
        await a.write(b"uname\n")
        assert await a.get() == b"got:uname\n"
        assert await b.get() == b"got:uname\n"
        await b.write(b"id\n")  # either viewer types
        assert await a.get() == b"got:id\n"
        assert await b.get() == b"got:id\n"
        assert fake.accepted == 1
        a.leave()
        assert fake.open == 1  # b still watches
        b.leave()
        await _until(lambda: fake.open == 0)  # the last one out lets go of the socket
        c = await console_hub.join(str(fake.path))
        await c.write(b"x\n")
        assert await c.get() == b"got:x\n"
        assert fake.accepted == 2
        c.leave()
        server.close()

    asyncio.run(main())


def test_the_guest_s_end_ends_every_viewer(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeConsole(tmp_path / "c.sock")
        server = await fake.start()
        a = await console_hub.join(str(fake.path))
        b = await console_hub.join(str(fake.path))
        await _until(lambda: fake.writers != [])
        fake.hang_up()  # QEMU stopped
        assert await asyncio.wait_for(a.get(), 2) is None
        assert await asyncio.wait_for(b.get(), 2) is None
        assert str(fake.path) not in console_hub._hubs
        server.close()

    asyncio.run(main())


def test_a_viewer_that_stops_reading_is_dropped_not_the_others(tmp_path: Path) -> None:
    async def main() -> None:
        fake = FakeConsole(tmp_path / "c.sock")
        server = await fake.start()
        slow = await console_hub.join(str(fake.path))
        fast = await console_hub.join(str(fake.path))
        for i in range(console_hub.BACKLOG + 5):
            await fast.write(f"{i}\n".encode())
            assert (await asyncio.wait_for(fast.get(), 2) or b"").startswith(b"got:")
        assert slow not in slow.hub.viewers
        drained = [await slow.get() for _ in range(slow.queue.qsize())]
        assert drained[-1] is None  # told it was dropped
        fast.leave()
        server.close()

    asyncio.run(main())


def test_a_missing_socket_raises_and_leaves_no_hub(tmp_path: Path) -> None:
    async def main() -> None:
        path = str(tmp_path / "none.sock")
        try:
            await console_hub.join(path)
        except OSError:
            pass
        else:
            raise AssertionError("joined a console that does not exist")
        assert path not in console_hub._hubs

    asyncio.run(main())
