"""Pieces of the fleet that need no services: outbox cursors ordered as the feed orders them."""

from __future__ import annotations

from deploy.demo.fleet import cursor_key


def test_cursors_compare_by_transaction_then_position() -> None:
    assert cursor_key("") == (0, 0)
    assert cursor_key("81234.77") == (81234, 77)
    ordered = ["", "9.500", "10.2", "10.11", "11.1"]
    assert sorted(ordered, key=cursor_key) == ordered
