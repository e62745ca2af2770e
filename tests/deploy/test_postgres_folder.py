"""A stack's outside PostgreSQL folder (`/var/tmp/keel-postgres-<hash of the home path>`) belongs to one home:
a home recreated at the same path (a new clone, pytest's reused temp names) never adopts what an earlier
one left there, while a stack that simply restarts keeps its data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from deploy.local.postgres_server import OWNER_FILE, claim_outside_folder
from keel.errors import ConfigurationError


def _leave_data(outside: Path, pid: int) -> None:
    (outside / "data").mkdir(parents=True, exist_ok=True)
    (outside / "data" / "PG_VERSION").write_text("15\n")
    (outside / "data" / "postmaster.pid").write_text(f"{pid}\n/var/tmp/x\n")


def test_the_same_home_keeps_its_data_across_restarts(tmp_path: Path) -> None:
    home, outside = tmp_path / "clone" / ".keel" / "postgres", tmp_path / "outside"
    claim_outside_folder(outside, home)
    _leave_data(outside, 999_999_999)
    claim_outside_folder(outside, home)
    assert (outside / "data" / "PG_VERSION").exists()


def test_a_home_recreated_at_the_same_path_starts_afresh(tmp_path: Path) -> None:
    home, outside = tmp_path / "clone" / ".keel" / "postgres", tmp_path / "outside"
    claim_outside_folder(outside, home)
    _leave_data(outside, 999_999_999)  # a stale postmaster.pid whose server is long gone
    shutil.rmtree(tmp_path / "clone")
    claim_outside_folder(outside, home)
    assert not (outside / "data").exists()
    assert (outside / OWNER_FILE).read_text() == (home / OWNER_FILE).read_text()


def test_a_folder_made_before_owner_marks_is_adopted(tmp_path: Path) -> None:
    home, outside = tmp_path / "clone" / ".keel" / "postgres", tmp_path / "outside"
    _leave_data(outside, 999_999_999)
    claim_outside_folder(outside, home)
    assert (outside / "data" / "PG_VERSION").exists()
    assert (outside / OWNER_FILE).exists()


def test_a_removed_homes_server_that_still_runs_is_named_not_deleted(tmp_path: Path) -> None:
    home, outside = tmp_path / "clone" / ".keel" / "postgres", tmp_path / "outside"
    claim_outside_folder(outside, home)
    _leave_data(outside, os.getpid())  # a live process holds the lock
    shutil.rmtree(tmp_path / "clone")
    with pytest.raises(ConfigurationError, match=r"still runs; stop it \(pg_ctl -D .*outside/data stop\)"):
        claim_outside_folder(outside, home)
    assert (outside / "data" / "PG_VERSION").exists()
