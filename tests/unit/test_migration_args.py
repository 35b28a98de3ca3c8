"""The pure parts of live migration: parameters, capabilities, URIs, statistics."""

from __future__ import annotations

from typing import Any

import pytest

from haven.hypervisor.base import HypervisorError
from haven.hypervisor.qemu.migration_spec import (
    MigrationStats,
    capabilities,
    migration_params,
    stats_of,
    tcp_uri,
)

MIB = 1 << 20


def test_defaults_are_a_30_ms_downtime_and_effectively_unlimited_bandwidth() -> None:
    assert migration_params({}) == (30, 10000 * MIB)
    assert migration_params({"migration_downtime": None, "migration_bandwidth": ""}) == (
        30, 10000 * MIB)


def test_hvparams_are_milliseconds_and_mebibytes_per_second() -> None:
    assert migration_params({"migration_downtime": 50, "migration_bandwidth": 128}) == (
        50, 128 * MIB)
    # From the command line (-H migration_bandwidth=64) they arrive as strings.
    assert migration_params({"migration_downtime": "10", "migration_bandwidth": "64"}) == (
        10, 64 * MIB)
    assert migration_params({"kernel_path": "/boot/x"}) == (30, 10000 * MIB)


@pytest.mark.parametrize(("key", "value"), [
    ("migration_downtime", "fast"),
    ("migration_downtime", 0),
    ("migration_bandwidth", -5),
    ("migration_bandwidth", 2.5),
    ("migration_bandwidth", [1]),
])
def test_bad_hvparams_are_refused_with_a_sentence_naming_the_parameter(
        key: str, value: Any) -> None:
    with pytest.raises(HypervisorError, match=f"{key}="):
        migration_params({key: value})


def test_capabilities_always_set_events_and_never_the_return_path() -> None:
    caps = {c["capability"]: c["state"] for c in capabilities(False)}
    assert caps == {"events": True, "pause-before-switchover": False, "return-path": False}
    assert {c["capability"]: c["state"] for c in capabilities(True)}[
        "pause-before-switchover"] is True


def test_tcp_uri_brackets_ipv6_addresses() -> None:
    assert tcp_uri("192.168.50.2", 12000) == "tcp:192.168.50.2:12000"
    assert tcp_uri("fd00::2", 12000) == "tcp:[fd00::2]:12000"
    assert tcp_uri("[fd00::2]", 1) == "tcp:[fd00::2]:1"


def test_stats_come_from_query_migrate_and_the_measured_window() -> None:
    info = {"status": "completed", "total-time": 412, "downtime": 17, "setup-time": 2,
            "ram": {"transferred": 95_000_000, "total": 134_000_000}}
    assert stats_of(info, 12.5) == MigrationStats(412.0, 17.0, 2.0, 95_000_000, 12.5)
    # The completion event can come before the numbers: all zero, not an error.
    assert stats_of({"status": "completed"}) == MigrationStats(0.0, 0.0, 0.0, 0, 0.0)
