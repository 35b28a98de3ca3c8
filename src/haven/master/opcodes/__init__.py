"""Every opcode Haven runs; importing this package registers them all."""

from haven.master.opcodes import cluster, node

__all__ = ["cluster", "node"]
