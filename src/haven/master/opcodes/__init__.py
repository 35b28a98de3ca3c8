"""Every opcode Haven runs; importing this package registers them all."""

from haven.master.opcodes import (
                                  cluster,
                                  instance,
                                  instance_create,
                                  instance_drbd,
                                  instance_migrate,
                                  instance_modify,
                                  node,
                                  node_evac,
                                  query,
                                  tags,
)

__all__ = ["cluster", "instance", "instance_create", "instance_drbd", "instance_migrate",
           "instance_modify", "node", "node_evac", "query", "tags"]
