"""``haven-noded``: the node daemon's entry point."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

from haven.daemon.settings import DEFAULT_API_PORT, DEFAULT_DATA_DIR, DaemonSettings
from haven.errors import HavenError


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
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s")
    import haven.master.opcodes  # noqa: F401 - registers every opcode
    from haven.daemon.noded import NodeDaemon

    try:
        settings = DaemonSettings(name=args.name, address=args.address or default_address(),
                                  data_dir=args.data_dir, api_port=args.port)
        daemon = NodeDaemon(settings)
    except (HavenError, OSError) as exc:
        print(f"haven-noded: {exc}", file=sys.stderr)
        return 1

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("signal %d: stopping", signum)
        daemon.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.run()
    except OSError as exc:
        print(f"haven-noded: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
