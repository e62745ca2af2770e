"""What the example app's users do: realistic edits of tasks, projects and comments in one tenant.

A `TenantBoard` knows what exists in its tenant (as far as the plan can know: what someone created earlier
in the plan) and draws edits against it from the plan's random generator: creating, renaming,
re-prioritising, completing and deleting tasks, commenting, editing projects — and bursts of contention,
where several people change the same field of a shared task at once. Edits are intents in the newest
model; `deploy/demo/edits.py` renders them into the version a device speaks when it writes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["SHARED_TASKS", "Author", "Edit", "TenantBoard"]

PROJECTS = (("inbox", "#6b7280"), ("launch", "#2563eb"), ("hiring", "#16a34a"), ("offsite", "#d97706"))
TASK_TITLES = (
    "Draft the launch plan",
    "Book the venue",
    "Review the budget",
    "Call the supplier",
    "Update the roadmap",
    "Prepare the demo",
    "Fix the login bug",
    "Write release notes",
    "Interview candidates",
    "Order new laptops",
    "Plan the offsite",
    "Renew the certificates",
)
WORDS = ("urgent", "later", "blocked", "waiting", "done soon", "needs review", "ask Sam", "see notes", "v2", "final")
LABELS = ("frontend", "backend", "ops", "design", "legal", "q3")
COMMENTS = ("On it.", "Can we move this?", "Done on my side.", "Needs a second look.", "+1", "Blocked by legal.")
DUE_DATES = ("2026-07-01", "2026-07-15", "2026-08-01", "1 Sep 2026", "30/09/2026", "next week")
SHARED_TASKS = 8  # the tasks every device of a tenant knows from the start: where conflicts happen


class Author(Protocol):
    """Who edits: a device of the plan."""

    @property
    def device_id(self) -> str:
        """The device's id (ids of what it creates derive from it)."""
        ...

    @property
    def label(self) -> str:
        """A name for people (comment authors, conflicting titles)."""
        ...

    @property
    def is_legacy(self) -> bool:
        """A build that speaks task v1 only: its UI has no priority, no labels, no DOING."""
        ...


@dataclass(frozen=True, slots=True)
class Edit:
    """One change an author makes: the fields of an upsert (newest model), or a delete."""

    entity_type: str
    entity_id: str
    fields: tuple[tuple[str, Any], ...] = ()
    delete: bool = False


@dataclass
class TenantBoard:
    """What exists in one tenant, to aim edits at."""

    tasks: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    created: dict[str, int] = field(default_factory=dict)

    def _new_id(self, author: Author, kind: str) -> str:
        self.created[author.device_id] = self.created.get(author.device_id, 0) + 1
        return f"{author.device_id}-{kind}-{self.created[author.device_id]}"

    def seed(self, rng: random.Random, owner: Author) -> list[Edit]:
        """The tenant's first device sets up the projects and the shared tasks."""
        edits = [
            Edit("project", f"project-{n}", (("name", name), ("color", color), ("archived", False)))
            for n, (name, color) in enumerate(PROJECTS, start=1)
        ]
        for n in range(1, SHARED_TASKS + 1):
            task = f"shared-task-{n}"
            self.tasks.append(task)
            edits.append(Edit("task", task, tuple(_task_intent(rng, owner, fresh=True).items())))
        return edits

    def edit(self, rng: random.Random, author: Author) -> Edit:  # noqa: PLR0911 - one return per kind of edit
        """One everyday edit by `author`."""
        roll = rng.random()
        if roll < 0.22 or not self.tasks:
            task = self._new_id(author, "task")
            self.tasks.append(task)
            return Edit("task", task, tuple(_task_intent(rng, author, fresh=True).items()))
        if roll < 0.64:
            task = rng.choice(self.tasks[:SHARED_TASKS] if rng.random() < 0.5 else self.tasks)
            return Edit("task", task, tuple(_task_intent(rng, author, fresh=False).items()))
        if roll < 0.8:
            comment = self._new_id(author, "comment")
            self.comments.append(comment)
            body = {"task_id": rng.choice(self.tasks), "body": rng.choice(COMMENTS), "author": author.label}
            return Edit("comment", comment, tuple(body.items()))
        if roll < 0.87:
            project = rng.randrange(len(PROJECTS))
            name, color = PROJECTS[project]
            change: dict[str, Any] = (
                {"name": f"{name} ({rng.choice(WORDS)})"} if rng.random() < 0.6 else {"color": color}
            )
            if rng.random() < 0.1:
                change = {"archived": rng.random() < 0.5}
            return Edit("project", f"project-{project + 1}", tuple(change.items()))
        if roll < 0.92 and self.comments:
            return Edit("comment", rng.choice(self.comments), (("body", rng.choice(COMMENTS)),))
        if roll < 0.96 and len(self.tasks) > SHARED_TASKS:
            # Mostly tasks someone created during the run; now and then a shared one (edits of it then conflict).
            pool = self.tasks[SHARED_TASKS:] if rng.random() < 0.8 else self.tasks[:SHARED_TASKS]
            return Edit("task", rng.choice(pool), delete=True)
        if self.comments:
            return Edit("comment", rng.choice(self.comments), delete=True)
        return Edit("task", self.tasks[0], (("title", rng.choice(TASK_TITLES)),))

    def contention(self, rng: random.Random, members: Sequence[Author]) -> list[tuple[Author, Edit]]:
        """Two or three authors change the same field of one shared task, each to their own value."""
        writers = rng.sample(list(members), min(len(members), rng.choice((2, 2, 3))))
        task = rng.choice(self.tasks[:SHARED_TASKS])
        legacy = any(w.is_legacy for w in writers)
        name = rng.choice(("title", "status", "due") if legacy else ("title", "status", "priority", "description"))
        edits: list[tuple[Author, Edit]] = []
        for writer in writers:
            if name == "title":
                value: Any = f"{rng.choice(TASK_TITLES)} ({writer.label})"
            elif name == "status":
                value = rng.choice(("TODO", "DONE") if legacy else ("TODO", "DOING", "DONE"))
            elif name == "priority":
                value = rng.randint(0, 3)
            elif name == "due":
                value = rng.choice(DUE_DATES)
            else:
                value = f"{writer.label} says: {rng.choice(COMMENTS)}"
            edits.append((writer, Edit("task", task, ((name, value),))))
        return edits


def _task_intent(rng: random.Random, author: Author, *, fresh: bool) -> dict[str, Any]:
    intent: dict[str, Any] = {}
    if fresh:
        intent["title"] = rng.choice(TASK_TITLES)
        intent["project_id"] = f"project-{rng.randrange(len(PROJECTS)) + 1}"
        intent["status"] = "TODO"
        if rng.random() < 0.5:
            intent["priority"] = rng.randint(0, 3)
        if rng.random() < 0.3:
            intent["due"] = rng.choice(DUE_DATES)
        return _for_build(intent, author, rng)
    choice = rng.random()
    if choice < 0.3:
        intent["title"] = f"{rng.choice(TASK_TITLES)} ({rng.choice(WORDS)})"
    elif choice < 0.5:
        intent["status"] = rng.choice(("DOING", "DONE") if not author.is_legacy else ("TODO", "DONE"))
    elif choice < 0.7:
        intent["priority"] = rng.randint(0, 3)
        intent["description"] = f"{rng.choice(WORDS)}: {rng.choice(WORDS)}"
    elif choice < 0.85:
        intent["description"] = f"{rng.choice(WORDS)} — {rng.choice(COMMENTS)}"
    else:
        intent["due"] = rng.choice(DUE_DATES)
    if rng.random() < 0.25:
        intent["labels"] = sorted(rng.sample(LABELS, rng.randint(1, 2)))
    return _for_build(intent, author, rng)


def _for_build(intent: dict[str, Any], author: Author, rng: random.Random) -> dict[str, Any]:
    """A legacy build's UI has no priority and no labels: it never states them."""
    if author.is_legacy:
        intent.pop("priority", None)
        intent.pop("labels", None)
        if not intent:
            intent["title"] = rng.choice(TASK_TITLES)
    return intent
