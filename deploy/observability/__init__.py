"""Observability of a Keel deployment: the live dashboard, `keel doctor`, and the probes both read with.

The probes only read: PostgreSQL (projector and gateway tables), Kafka (end, start and committed offsets,
the dead-letter topic) and the schema registry. `grafana/` and `prometheus/` hold the Grafana dashboard and
the alert rules on the metrics the services export (docs/observability.md).
"""
