"""Haven: a high-availability virtualization cluster manager with Ganeti's commands."""

__version__ = "0.1.0"
