"""Projections: PostgreSQL models, conflict rules, per-device outboxes, digests, rebuilds and snapshots."""
