"""The node daemon's log: what a person needs at INFO, library request traces only at
DEBUG, and a file that rotates instead of growing without bound."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from haven.daemon import main


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {n: logging.getLogger(n).level for n in main.CHATTY_LOGGERS}
    hook = threading.excepthook
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        if h not in handlers:
            h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for n, lv in levels.items():
        logging.getLogger(n).setLevel(lv)
    threading.excepthook = hook


def test_etcd_request_traces_stay_out_of_the_info_log(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "noded.log"
    main.setup_logging("INFO", log_file)
    logging.getLogger("httpx").info("HTTP Request: POST http://127.0.10.1:2379/v3/kv/range")
    logging.getLogger("qemu.qmp.protocol").info("Task.Reader: end-of-file")
    logging.getLogger("haven.daemon.noded").info("became master")
    logging.getLogger("httpx").warning("connection pool is full")
    text = log_file.read_text()
    assert "HTTP Request" not in text and "end-of-file" not in text
    assert "became master" in text and "connection pool is full" in text


def test_debug_keeps_the_request_traces(tmp_path: Path) -> None:
    log_file = tmp_path / "noded.log"
    main.setup_logging("debug", log_file)
    logging.getLogger("httpx").info("HTTP Request: POST .../v3/kv/range")
    assert "HTTP Request" in log_file.read_text()


def test_the_log_file_rotates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main, "LOG_MAX_BYTES", 2000)
    log_file = tmp_path / "noded.log"
    main.setup_logging("INFO", log_file)
    for i in range(500):
        logging.getLogger("haven.test").info("line %d of a long idle day", i)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["noded.log", *(f"noded.log.{i}" for i in range(1, main.LOG_BACKUPS + 1))]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    assert "line 499 " in log_file.read_text()


def test_a_thread_crash_is_logged(tmp_path: Path) -> None:
    log_file = tmp_path / "noded.log"
    main.setup_logging("INFO", log_file)

    def boom() -> None:
        raise RuntimeError("agent cycle broke")

    t = threading.Thread(target=boom, name="agent")
    t.start()
    t.join()
    text = log_file.read_text()
    assert "uncaught exception in thread agent" in text and "agent cycle broke" in text


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        main.setup_logging("LOUD")
