"""Read-only HTTP probes: the schema registry's version and levels, service health endpoints, scraped metrics.

The registry is asked through the `SchemaRegistry` port for compatibility levels and over plain HTTP for its
version (Confluent: `/v1/metadata/version`; Apicurio: `/apis/registry/v3/system/info`). A service's `/metrics`
is parsed with prometheus_client's own text parser, so the dashboard can show retries the gateway and the
projector count without a Prometheus server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from keel.errors import ServiceUnavailableError
from schemas.catalog import Catalog, subject_for
from schemas.registry import SchemaRegistry

__all__ = [
    "HealthAnswer",
    "SubjectLevel",
    "fetch_health",
    "get_with_retries",
    "registry_version",
    "scrape_samples",
    "subject_levels",
]

GET_ATTEMPTS = 3  # one slow or dropped answer (a GC pause, a busy 2-core CI box) is not an outage


@dataclass(frozen=True)
class SubjectLevel:
    """A subject's compatibility level in the registry against the one `schemas/subjects.toml` configures."""

    entity_type: str
    subject: str
    exists: bool
    configured: str
    actual: str | None  # the subject's own level; None when it inherits the registry's

    @property
    def matches(self) -> bool:
        """Whether the registry enforces what subjects.toml says."""
        return self.actual == self.configured


@dataclass(frozen=True)
class HealthAnswer:
    """What a health endpoint said (status None: nothing answered)."""

    url: str
    status: int | None
    body: dict[str, Any]
    error: str | None = None

    @property
    def is_up(self) -> bool:
        """Answered 200."""
        return self.status == 200


async def get_with_retries(
    client: httpx.AsyncClient, url: str, *, attempts: int = GET_ATTEMPTS, pause_s: float = 0.5
) -> httpx.Response:
    """GET `url`, retrying transport failures (timeout, refused or dropped connection); the last one is raised."""
    for attempt in range(1, attempts):
        try:
            return await client.get(url)
        except httpx.TransportError:
            await asyncio.sleep(pause_s * attempt)
    return await client.get(url)


async def registry_version(client: httpx.AsyncClient, registry_url: str) -> str:
    """The registry's product and version; ServiceUnavailableError when it does not answer."""
    base = registry_url.rstrip("/")
    attempts = [(f"{base}/v1/metadata/version", "Confluent Schema Registry")]
    if "/apis/" in base:
        attempts.append((base.split("/apis/", 1)[0] + "/apis/registry/v3/system/info", "Apicurio Registry"))
    last_error = "no answer"
    for url, product in attempts:
        try:
            response = await get_with_retries(client, url)
        except httpx.HTTPError as error:
            raise ServiceUnavailableError(
                "registry", f"GET {url} failed {GET_ATTEMPTS} times, last: {error!r}"
            ) from error
        if response.status_code == 200:
            body = response.json()
            version = body.get("version") or "unknown version"
            return f"{body.get('name') or product} {version}"
        last_error = f"GET {url}: HTTP {response.status_code}"
    return f"version not reported ({last_error})"


async def subject_levels(registry: SchemaRegistry, catalog: Catalog, topic_for: Any) -> list[SubjectLevel]:
    """Each entity's subject: whether it exists and its level, against subjects.toml."""
    levels: list[SubjectLevel] = []
    for entity in catalog.entities():
        subject = subject_for(topic_for(entity))
        # Per subject, not from the subject list: registries page that list (Apicurio stops at 1000).
        exists = bool(await registry.versions(subject))
        actual = await registry.get_compatibility(subject) if exists else None
        levels.append(SubjectLevel(entity, subject, exists, catalog.policy(entity).compatibility, actual))
    return levels


async def fetch_health(client: httpx.AsyncClient, url: str) -> HealthAnswer:
    """GET a health endpoint; never raises (an unreachable service is an answer too)."""
    try:
        response = await get_with_retries(client, url)
    except httpx.HTTPError as error:
        return HealthAnswer(url, None, {}, f"{type(error).__name__}: {error}")
    try:
        parsed = response.json()
    except ValueError:
        parsed = {}
    return HealthAnswer(url, response.status_code, parsed if isinstance(parsed, dict) else {})


async def scrape_samples(
    client: httpx.AsyncClient, url: str, names: Iterable[str]
) -> list[tuple[str, dict[str, str], float]]:
    """Samples (name, labels, value) of the named metrics in a service's /metrics (empty if unreachable)."""
    wanted = set(names)
    try:
        response = await client.get(url)
    except httpx.HTTPError:
        return []
    if response.status_code != 200:
        return []
    samples: list[tuple[str, dict[str, str], float]] = []
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name in wanted:
                samples.append((sample.name, dict(sample.labels), float(sample.value)))
    return samples
