"""``haven-noded``: the node daemon's entry point."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType

from haven.daemon.settings import DEFAULT_API_PORT, DEFAULT_DATA_DIR, DaemonSettings
from haven.errors import HavenError

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 5
# Libraries that log protocol traffic at INFO: httpx a line per etcd request (about
# 10 a second on an idle node), qemu.qmp one per monitor disconnect.  A person needs
# none of it unless debugging.
CHATTY_LOGGERS = ("httpx", "httpcore", "qemu.qmp", "asyncio", "urllib3")


def setup_logging(level: str, log_file: Path | None = None) -> logging.Handler:
    """Configure the root logger: ``level`` for Haven, WARNING for the libraries of
    :data:`CHATTY_LOGGERS` unless ``level`` is DEBUG; ``log_file`` rotated by size
    (the daemon's own handler, so that a file held open by a shell redirect never
    grows without bound); uncaught exceptions of any thread logged too."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if numeric <= logging.DEBUG
                                         else max(numeric, logging.WARNING))

    def thread_crash(exc: threading.ExceptHookArgs) -> None:
        if exc.exc_type is SystemExit:
            return
        thread = exc.thread.name if exc.thread else "?"
        log.critical("uncaught exception in thread %s", thread,
                     exc_info=(exc.exc_type, exc.exc_value or exc.exc_type(),
                               exc.exc_traceback))

    threading.excepthook = thread_crash
    return handler


def default_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="haven-noded", description="Haven node daemon")
    p.add_argument("--name", default=socket.gethostname().split(".")[0],
                   help="this node's name (default: the short host name)")
    p.add_argument("--address", default=None,
                   help="IP address to serve the API and etcd on (default: the host's)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--port", type=int, default=DEFAULT_API_PORT)
    p.add_argument("--log-level", default="INFO",
                   help="DEBUG also logs every etcd request and QMP exchange")
    p.add_argument("--log-file", type=Path, default=None,
                   help="write the log there, rotated at 10 MiB, 5 kept (default: stderr)")
    args = p.parse_args(argv)
    try:
        setup_logging(args.log_level, args.log_file)
    except (ValueError, OSError) as exc:
        print(f"haven-noded: cannot log to {args.log_file} at level {args.log_level}: "
              f"{exc}", file=sys.stderr)
        return 1
    import haven.master.opcodes  # noqa: F401 - registers every opcode
    from haven.daemon.noded import NodeDaemon

    try:
        settings = DaemonSettings(name=args.name, address=args.address or default_address(),
                                  data_dir=args.data_dir, api_port=args.port)
        daemon = NodeDaemon(settings)
    except (HavenError, OSError) as exc:
        log.error("haven-noded: %s", exc)
        print(f"haven-noded: {exc}", file=sys.stderr)
        return 1

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        daemon.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.run()
    except OSError as exc:
        log.error("haven-noded: cannot start: %s", exc)
        print(f"haven-noded: cannot start: {exc}", file=sys.stderr)
        return 1
    log.info("node daemon %s stopped", settings.name)
    logging.shutdown()
    # The API's worker threads may still sit in a long poll (a RAPI job wait): nothing
    # they hold needs saving, and waiting for them would delay a restart that has to
    # take the lease over within seconds.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
