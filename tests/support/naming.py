"""Per-test names: isolation by naming, not by cleanup."""

from __future__ import annotations

import uuid


def unique(prefix: str) -> str:
    """A short name no other test run will use."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def unique_identifier(prefix: str) -> str:
    """A unique name usable as a SQL identifier."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
