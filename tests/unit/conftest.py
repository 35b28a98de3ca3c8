"""Fixtures shared by the unit tier (helpers live in :mod:`tests.unit.support`)."""

from __future__ import annotations

import pytest

from tests.unit.support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
