"""Disk templates: where an instance's disks live and how a node makes them usable."""

from haven.storage.base import DiskTemplate, StorageError, StoragePaths, template

__all__ = ["DiskTemplate", "StorageError", "StoragePaths", "template"]
