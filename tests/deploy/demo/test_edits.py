"""Intents in the newest model rendered for the version a device speaks."""

from __future__ import annotations

from deploy.demo.edits import render
from schemas.domain_migrations import parse_due


def test_a_task_intent_renders_for_each_version() -> None:
    intent = {"title": "Plan", "description": "see notes", "status": "DOING", "priority": 2, "labels": ["ops"]}
    assert render("task", 1, intent) == {"title": "Plan", "notes": "see notes", "status": "TODO"}
    assert render("task", 2, intent) == {"title": "Plan", "description": "see notes", "status": "DOING", "priority": 2}
    assert render("task", 3, intent) == intent


def test_v3_keeps_due_at_in_step_with_due() -> None:
    assert render("task", 3, {"due": "2026-07-01"}) == {"due": "2026-07-01", "due_at": parse_due("2026-07-01")}
    assert render("task", 3, {"due": "next week"}) == {"due": "next week", "due_at": None}
    assert render("task", 2, {"due": "2026-07-01"}) == {"due": "2026-07-01"}


def test_an_intent_a_version_cannot_express_renders_to_nothing() -> None:
    assert render("task", 2, {"labels": ["ops"]}) is None
    assert render("task", 1, {"priority": 1}) is None
    assert render("comment", 1, {"body": "+1"}) == {"body": "+1"}
