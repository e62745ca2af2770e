"""The bench's run context: the stack's endpoints, a unique tag, fresh names per stage, and cleanup of them.

The stack is shared with other people's work, so every stage gets names of its own — topic prefix, PostgreSQL
schema, consumer group, registry subjects — derived from the run's tag, and the run removes exactly those
afterwards (topics, subjects, schemas it created; nothing else is touched).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from keel.kafka_adapter import TopicSpec, delete_groups, delete_topics_under, ensure_topics
from keel.logging import get_logger
from keel.settings import Settings
from projections.pg_adapter import Pool, connect_pool
from projections.sql_migrations import quote_ident
from schemas.catalog import default_catalog

__all__ = ["BenchContext", "Names"]

_log = get_logger("bench")


@dataclass(frozen=True)
class Names:
    """The names one stage (or one repetition) uses: topics under `prefix`, PostgreSQL `schema`, `group`."""

    prefix: str
    schema: str
    group: str

    def settings(self, base: Settings, **overrides: Any) -> Settings:
        """`base` pointed at these names."""
        values: dict[str, Any] = {"topic_prefix": self.prefix, "pg_schema": self.schema, "consumer_group": self.group}
        values.update(overrides)
        return base.model_copy(update=values)


@dataclass
class BenchContext:
    """Endpoints, the run's tag, and every name handed out (for cleanup)."""

    settings: Settings
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    logs: Path = Path("reports/bench-logs")  # service logs go to <logs>/<tag>/
    prefixes: list[str] = field(default_factory=list)
    schemas: list[str] = field(default_factory=list)
    profiles: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # filled by `keel bench --profile`
    tallies: dict[str, dict[str, int]] = field(default_factory=dict)  # what → {"sent": n, "landed": m}
    _counter: int = 0

    def names(self, label: str) -> Names:
        """Fresh names for `label` (lower-case letters and digits)."""
        self._counter += 1
        stem = f"bench{self.tag}{label}{self._counter}"
        names = Names(prefix=f"{stem}", schema=stem, group=f"{stem}-group")
        self.prefixes.append(names.prefix)
        self.schemas.append(names.schema)
        return names

    def tally(self, what: str, *, sent: int, landed: int) -> None:
        """Note how many items a stage sent and how many arrived at the far end (a run loses none)."""
        self.tallies[what] = {"sent": sent, "landed": landed}

    @property
    def log_dir(self) -> Path:
        """Where this run's service processes log."""
        return self.logs / self.tag

    def fresh_schema(self, label: str) -> str:
        """A PostgreSQL schema name of this run alone (dropped at cleanup)."""
        return self.names(label).schema

    async def pool(self, max_size: int = 4) -> Pool:
        """A pool on the stack's PostgreSQL (the caller closes it)."""
        return await connect_pool(self.settings.database_url, max_size=max_size, application_name="keel-bench")

    async def create_topics(self, settings: Settings, *, partitions: int | None = None) -> None:
        """The change topics (and DLQ) of `settings`' prefix, like the services create them."""
        count = partitions or settings.change_topic_partitions
        specs = [TopicSpec(settings.topic_for(entity), count, 1) for entity in default_catalog().entities()]
        specs.append(TopicSpec(settings.dlq_topic, count, 1))
        await ensure_topics(settings, specs)

    async def cleanup(self) -> None:
        """Delete this run's topics, consumer groups, registry subjects and PostgreSQL schemas (best effort, logged)."""
        await delete_topics_under(self.settings, self.prefixes)
        await asyncio.to_thread(delete_groups, self.settings, self.prefixes)  # groups are named after prefixes
        await self._delete_subjects()
        await self._drop_schemas()

    async def _delete_subjects(self) -> None:
        # Soft delete, then permanent: the shared registry should not keep this run's subjects.
        async with httpx.AsyncClient(base_url=self.settings.registry_url, timeout=10.0) as client:
            for prefix in self.prefixes:
                for entity in default_catalog().entities():
                    subject = f"{prefix}.{entity}.changes-value"
                    with contextlib.suppress(httpx.HTTPError):
                        await client.delete(f"/subjects/{subject}")
                        await client.delete(f"/subjects/{subject}", params={"permanent": "true"})

    async def _drop_schemas(self) -> None:
        try:
            pool = await self.pool(max_size=1)
        except Exception as error:  # noqa: BLE001 - cleanup must not hide the bench's own result
            _log.warning("bench schemas not dropped", error=repr(error))
            return
        try:
            for schema in self.schemas:
                await pool.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
        finally:
            await pool.close()

    @contextlib.asynccontextmanager
    async def cleaned(self) -> AsyncIterator[BenchContext]:
        """Run the block, then clean up whatever it created."""
        try:
            yield self
        finally:
            await self.cleanup()
