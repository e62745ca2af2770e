"""The schema registry port on confluent-kafka's AsyncSchemaRegistryClient (any Confluent-API registry)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient, Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from keel.errors import (
    ConfigurationError,
    IncompatibleSchemaError,
    ServiceUnavailableError,
    UnknownSchemaError,
)
from schemas.registry import CompatibilityReport, RegisteredSchema

__all__ = ["ConfluentSchemaRegistry"]

T = TypeVar("T")

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, OSError, TimeoutError)
try:  # confluent-kafka's client talks through httpx2 when it is installed (its _httpx_compat), else httpx
    import httpx2

    _TRANSPORT_ERRORS += (httpx2.TransportError,)
except ImportError:  # pragma: no cover - depends on the installed client
    pass

# Confluent error codes (io.confluent.kafka.schemaregistry.rest.exceptions.Errors)
_SUBJECT_NOT_FOUND = 40401
_VERSION_NOT_FOUND = 40402
_SCHEMA_NOT_FOUND = 40403
_SUBJECT_LEVEL_NOT_CONFIGURED = 40408


class ConfluentSchemaRegistry:
    """`SchemaRegistry` over HTTP; outages raise ServiceUnavailableError, never a driver exception."""

    def __init__(self, url: str, *, timeout_s: float = 10.0, max_retries: int = 1) -> None:
        self.url = url.rstrip("/")
        self._client = AsyncSchemaRegistryClient({"url": self.url, "timeout": timeout_s, "max.retries": max_retries})
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout_s)
        self._schemas_by_id: dict[int, str] = {}

    async def _call(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        try:
            return await operation()
        except SchemaRegistryError as error:
            if error.http_status_code >= 500 or error.http_status_code in (-1, 408, 429):
                raise ServiceUnavailableError("schema registry", f"{what}: {error}") from error
            raise
        except _TRANSPORT_ERRORS as error:
            raise ServiceUnavailableError("schema registry", f"{what}: {error!r}") from error

    async def get_schema(self, schema_id: int) -> str:
        """Schema text by id, cached for the life of the client (ids are immutable)."""
        cached = self._schemas_by_id.get(schema_id)
        if cached is not None:
            return cached
        try:
            schema = await self._call(f"get schema {schema_id}", lambda: self._client.get_schema(schema_id))
        except SchemaRegistryError as error:
            if error.http_status_code == 404:
                raise UnknownSchemaError(schema_id) from error
            raise ServiceUnavailableError("schema registry", str(error)) from error
        text = str(schema.schema_str)
        self._schemas_by_id[schema_id] = text
        return text

    async def register(self, subject: str, schema: str) -> int:
        """Register or find; IncompatibleSchemaError when the subject's level refuses it."""
        try:
            return int(
                await self._call(
                    f"register {subject}", lambda: self._client.register_schema(subject, Schema(schema, "AVRO"))
                )
            )
        except SchemaRegistryError as error:
            if error.http_status_code == 409:
                raise IncompatibleSchemaError(
                    f"{subject}: the registry refused the schema: {error.error_message}"
                ) from error
            if error.http_status_code == 422:
                raise ConfigurationError(
                    f"{subject}: the registry says the schema is invalid: {error.error_message}"
                ) from error
            raise

    async def lookup(self, subject: str, schema: str) -> RegisteredSchema | None:
        """The registration of an equal schema, or None; its text is the one the registry holds.

        Plain HTTP, not the client's `lookup_schema`: that one answers with the text it was asked about and
        caches it as the text of the version found, so after a lookup of a canonically equal but edited
        schema (Apicurio ignores docs) `get_version` and `get_schema` would return the edited text.
        """
        found = await self._registered(
            f"lookup {subject}",
            lambda: self._http.post(
                f"/subjects/{quote(subject, safe='')}",
                json={"schema": schema, "schemaType": "AVRO"},
                headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
            ),
        )
        return None if found is None else RegisteredSchema(subject, found[0], found[1], found[2])

    async def _registered(
        self, what: str, request: Callable[[], Awaitable[httpx.Response]]
    ) -> tuple[int, int, str] | None:
        """(version, id, text) of a registration the registry answers with; None for 404."""
        response = await self._call(what, request)
        if response.status_code == 404:
            return None
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise ServiceUnavailableError("schema registry", f"{what}: HTTP {response.status_code}")
        body: Any = response.json()
        if response.status_code >= 400 or not isinstance(body, dict):
            raise ConfigurationError(f"{what}: the registry answered HTTP {response.status_code}: {body}")
        return int(body["version"]), int(body["id"]), str(body["schema"])

    async def subjects(self) -> list[str]:
        """Every subject, paging with offset/limit (Apicurio returns at most 1,000 subjects per call).

        Registries that ignore the paging parameters answer every page with the full list; paging stops as
        soon as a page adds nothing new, so both kinds are read completely.
        """
        page_size = 1000
        found: dict[str, None] = {}
        offset = 0
        while True:

            async def get_page(start: int = offset) -> httpx.Response:
                return await self._http.get("/subjects", params={"offset": start, "limit": page_size})

            response = await self._call("list subjects", get_page)
            if response.status_code >= 500:
                raise ServiceUnavailableError("schema registry", f"list subjects: HTTP {response.status_code}")
            response.raise_for_status()
            page = [str(subject) for subject in response.json()]
            before = len(found)
            found.update(dict.fromkeys(page))
            if len(page) < page_size or len(found) == before:
                return sorted(found)
            offset += len(page)

    async def versions(self, subject: str) -> list[int]:
        """Versions of a subject (empty when absent)."""
        try:
            return sorted(await self._call(f"versions of {subject}", lambda: self._client.get_versions(subject)))
        except SchemaRegistryError as error:
            if error.http_status_code == 404:
                return []
            raise

    async def get_version(self, subject: str, version: int | None = None) -> RegisteredSchema:
        """One version (latest when None), as the registry holds it (plain HTTP: see `lookup`)."""
        number = "latest" if version is None else str(version)
        found = await self._registered(
            f"{subject} v{number}", lambda: self._http.get(f"/subjects/{quote(subject, safe='')}/versions/{number}")
        )
        if found is None:
            raise ConfigurationError(f"subject {subject} has no version {version or 'latest'}")
        return RegisteredSchema(subject, found[0], found[1], found[2])

    async def get_compatibility(self, subject: str | None = None) -> str | None:
        """A subject's own level, or the global one."""
        try:
            return str(await self._call("get compatibility", lambda: self._client.get_compatibility(subject)))
        except SchemaRegistryError as error:
            if error.http_status_code == 404 or error.error_code == _SUBJECT_LEVEL_NOT_CONFIGURED:
                return None
            raise

    async def set_compatibility(self, level: str, subject: str | None = None) -> None:
        """Set a subject's (or the global) level. Registries may refuse this before the subject exists."""
        await self._call("set compatibility", lambda: self._client.set_compatibility(subject, level.upper()))

    async def test_compatibility(self, subject: str, schema: str) -> CompatibilityReport:
        """Ask the registry (verbose, so it explains itself when it can), against the versions its level names.

        Confluent compares `/versions` with the versions the subject's level names, but Apicurio's ccompat API
        compares `/versions` with every version and `/versions/latest` with the latest whatever the level; so
        ask about the latest version for non-transitive levels and about all of them for transitive ones, which
        both registries answer as registering would.
        """
        level = await self.get_compatibility(subject) or await self.get_compatibility(None) or "BACKWARD"
        against = "versions" if level.upper().endswith("_TRANSITIVE") else "versions/latest"
        path = f"/compatibility/subjects/{quote(subject, safe='')}/{against}"

        async def post() -> httpx.Response:
            return await self._http.post(
                path,
                params={"verbose": "true"},
                json={"schema": schema, "schemaType": "AVRO"},
                headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
            )

        response = await self._call(f"test compatibility of {subject}", post)
        if response.status_code == 404:
            return CompatibilityReport(is_compatible=True, messages=["subject has no versions yet"])
        if response.status_code >= 500:
            raise ServiceUnavailableError("schema registry", f"compatibility test: HTTP {response.status_code}")
        body: dict[str, Any] = response.json()
        if response.status_code >= 400:
            raise ConfigurationError(f"{subject}: registry refused the compatibility test: {body}")
        messages = [str(m) for m in body.get("messages", []) or []]
        return CompatibilityReport(bool(body.get("is_compatible")), messages)

    async def close(self) -> None:
        """Close both HTTP clients."""
        await self._client.aclose()
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"ConfluentSchemaRegistry({json.dumps(self.url)})"
