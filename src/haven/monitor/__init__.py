"""Monitoring: Prometheus metrics of a node and of the cluster (see :mod:`.collect`)."""
