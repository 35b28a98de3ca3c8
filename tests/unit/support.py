"""Helpers of the unit tier: a fake clock, polling, a node RPC that is never called."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from haven.noderpc import NodeRpc


class FakeClock:
    """A clock that moves only when told to (for leases, timestamps, deadlines)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class NoRpc(NodeRpc):
    """The unit tests' LUs never call another node; a call is a test bug."""

    def call(self, address: str, port: int, method: str, path: str,
             body: Any = None, timeout: float = 10.0, verify: bool | str = True) -> Any:
        raise AssertionError(f"unexpected node RPC {method} {path} to {address}:{port}")


def wait_for(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``cond`` (real time, 5 ms steps) until it holds; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.005)


def stays(cond: Callable[[], bool], duration: float = 0.2) -> bool:
    """True if ``cond`` holds at every poll during ``duration`` seconds."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not cond():
            return False
        time.sleep(0.01)
    return cond()
