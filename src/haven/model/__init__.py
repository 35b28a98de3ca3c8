"""Frozen dataclasses for what the store holds, with their JSON forms.

Every object round-trips through ``to_json``/``from_json``; unknown keys are ignored on
read so that an older daemon can read what a newer one wrote.
"""

from haven.model.cluster import Cluster
from haven.model.job import Job, JobStatus, OpStatus
from haven.model.keys import Keys
from haven.model.node import Node, NodeFacts

__all__ = ["Cluster", "Job", "JobStatus", "Keys", "Node", "NodeFacts", "OpStatus"]
