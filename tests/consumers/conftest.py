"""Fixtures of the consumer tests (shared with the projection tests)."""

from tests.projections.fixtures import change_topics, keel_settings, log_writer, pool, registry, stores

__all__ = ["change_topics", "keel_settings", "log_writer", "pool", "registry", "stores"]
