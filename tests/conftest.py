"""Fixtures shared by the whole suite: real services for integration tests, unique names for isolation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.naming import unique, unique_identifier
from tests.support.services import Services, resolve_services


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """The real Kafka, registry and PostgreSQL (env → local stack → testcontainers)."""
    with resolve_services() as resolved:
        yield resolved


@pytest.fixture
def topic_name() -> str:
    """A topic name of this test alone."""
    return unique("t")


@pytest.fixture
def group_id() -> str:
    """A consumer group of this test alone."""
    return unique("g")


@pytest.fixture
def subject_name(topic_name: str) -> str:
    """A registry subject of this test alone (TopicNameStrategy of `topic_name`)."""
    return f"{topic_name}-value"


@pytest.fixture
def pg_schema() -> str:
    """A PostgreSQL schema name of this test alone."""
    return unique_identifier("s")


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix of this test alone (topics become <prefix>.<entity>.changes)."""
    return unique("k")
