"""The runner image's Dockerfile matches what the tests run and what the operator mounts; the runner's and the
gateway's images install only their own pinned requirements.

No container engine is available here, so the image is not built in the tests; these checks keep
its entrypoint, user and paths in line with the code the tests do run."""

import json
import re
import tomllib
from pathlib import Path

import pytest

from agentrun_api.contract import (
    CHECKPOINT_MOUNT_PATH,
    CONFIG_ENV,
    CONFIG_FILE,
    CONFIG_MOUNT_PATH,
    STREAM_PORT,
    WORKSPACE_PATH,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "runner_image" / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    return [m[1].strip() for m in re.finditer(rf"^{name}\s+(.+)$", DOCKERFILE, re.MULTILINE)]


def test_entrypoint_is_the_command_the_tests_run() -> None:
    (entrypoint,) = instructions("ENTRYPOINT")
    assert json.loads(entrypoint) == ["python", "-m", "agentrun_runner"]


def test_image_is_multi_stage_from_a_pinned_slim_base_and_runs_as_non_root() -> None:
    assert len(instructions("FROM")) == 2
    (base,) = [a for a in instructions("ARG") if a.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-\w+", base)
    (user,) = instructions("USER")
    assert user == "65532:65532"
    assert "PYTHONDONTWRITEBYTECODE=1" in DOCKERFILE


def test_image_paths_and_port_follow_the_contract() -> None:
    assert f"{CONFIG_ENV}={CONFIG_MOUNT_PATH}/{CONFIG_FILE}" in DOCKERFILE
    assert WORKSPACE_PATH in DOCKERFILE
    assert CHECKPOINT_MOUNT_PATH in DOCKERFILE
    assert instructions("EXPOSE") == [str(STREAM_PORT)]


def requirement_lines(image: str) -> list[str]:
    text = (ROOT / image / "requirements.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def requirement_names(image: str) -> set[str]:
    return {line.split("==")[0].lower() for line in requirement_lines(image)}


@pytest.mark.parametrize("image", ["runner_image", "gateway"])
def test_image_requirements_use_the_project_pins(image: str) -> None:
    pinned = {
        line.split("==")[0].lower(): line
        for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    lines = requirement_lines(image)
    assert lines
    for line in lines:
        assert pinned[line.split("==")[0].lower()] == line
    assert (ROOT / image / "Dockerfile").read_text().count(f"COPY {image}/requirements.txt ") == 1


def test_gateway_image_holds_only_the_gateway_and_what_it_imports() -> None:
    dockerfile = (ROOT / "gateway" / "Dockerfile").read_text()
    copied = {m[1] for m in re.finditer(r"^COPY (\S+) ", dockerfile, re.MULTILINE) if not m[1].startswith("--")}
    assert copied == {
        "gateway/requirements.txt",
        "api/agentrun_api",
        "common/agentrun_common",
        "gateway/agentrun_gateway",
    }
    assert not requirement_names("gateway") & {"kopf", "kubernetes", "openai"}
