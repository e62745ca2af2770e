"""Fixtures shared by the whole suite: real services for integration tests, unique names for isolation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.naming import unique, unique_identifier
from tests.support.services import Services, resolve_services, secure_requested

PLAINTEXT_ONLY = "plaintext_only"
SECURITY_DOC = Path(__file__).parents[1] / "docs" / "security.md"  # lists every plaintext_only test
_DESELECTED = pytest.StashKey[list[str]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`make test-secure`: deselect (never skip) tests marked plaintext_only, each with a stated reason.

    The reasons are listed in docs/security.md (§ The test suite on the secure stack); the deselection is
    reported by pytest ("N deselected") and itemised in the terminal summary.
    """
    marked = [item for item in items if item.get_closest_marker(PLAINTEXT_ONLY) is not None]
    documented = SECURITY_DOC.read_text() if marked else ""
    for item in marked:
        marker = item.get_closest_marker(PLAINTEXT_ONLY)
        if marker is None or not marker.kwargs.get("reason"):
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.{PLAINTEXT_ONLY} needs reason=...")
        name = getattr(item, "originalname", item.name)
        if f"`{name}`" not in documented:
            raise pytest.UsageError(f"{item.nodeid}: list `{name}` and its reason in {SECURITY_DOC}")
    if not secure_requested() or not marked:
        return
    chosen = set(marked)
    items[:] = [item for item in items if item not in chosen]
    config.hook.pytest_deselected(items=marked)
    config.stash[_DESELECTED] = [
        f"{item.nodeid}: {marker.kwargs['reason']}"
        for item in marked
        if (marker := item.get_closest_marker(PLAINTEXT_ONLY)) is not None
    ]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Name every test the secure mode deselected, and why."""
    lines = config.stash.get(_DESELECTED, [])
    if lines:
        terminalreporter.section("plaintext_only tests deselected in secure mode (docs/security.md)")
        for line in lines:
            terminalreporter.write_line(line)


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
