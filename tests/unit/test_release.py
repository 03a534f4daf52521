"""The release path: the workflow passes actionlint and publishes what the chart, the docs and the krew manifest
name; the kubectl plugin builds as one reproducible file that says what it needs."""

import hashlib
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from release import plugin as release_plugin

from tests.harness.chart import CHART_DIR, REPO_ROOT

pytestmark = pytest.mark.unit

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "release.yml"
# Built by `make actionlint` (a dependency of `make lint`) from its Go module, pinned there.
ACTIONLINT = next(REPO_ROOT.glob(".lint-tools/actionlint-*/actionlint"), None)
needs_actionlint = pytest.mark.skipif(ACTIONLINT is None, reason="actionlint is not built: `make actionlint`")


def workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def steps_running(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) for step in job["steps"])


def actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    assert ACTIONLINT is not None
    return subprocess.run(
        [str(ACTIONLINT), "-no-color", "-oneline", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


@needs_actionlint
def test_the_release_workflow_passes_actionlint() -> None:
    linted = actionlint(WORKFLOW)
    assert (linted.returncode, linted.stdout) == (0, "")


@needs_actionlint
def test_actionlint_reports_a_job_that_needs_no_such_job(tmp_path: Path) -> None:
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        "on: push\njobs:\n  a:\n    needs: missing\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ steps.x.outputs.y }}\n"
    )
    linted = actionlint(broken)
    assert linted.returncode == 1
    assert "missing" in linted.stdout


def test_a_version_tag_publishes_the_three_images_for_two_architectures_signed() -> None:
    flow = workflow()
    assert flow[True]["push"]["tags"] == ["v[0-9]+.[0-9]+.[0-9]+"]  # YAML reads the key `on` as True
    images = flow["jobs"]["images"]
    built = {entry["image"]: entry["dockerfile"] for entry in images["strategy"]["matrix"]["include"]}
    assert built == {
        "operator": "operator/Dockerfile",
        "runner": "runner_image/Dockerfile",
        "gateway": "gateway/Dockerfile",
    }
    assert all((REPO_ROOT / dockerfile).is_file() for dockerfile in built.values())
    (push,) = [step for step in images["steps"] if step.get("uses", "").startswith("docker/build-push-action")]
    assert push["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert push["with"]["push"] is True
    assert images["env"]["IMAGE"] == "${{ needs.version.outputs.registry }}/${{ matrix.image }}"
    assert 'cosign sign --yes "${IMAGE}@${DIGEST}"' in steps_running(images)
    assert images["permissions"]["id-token"] == "write"  # keyless signing


def test_the_chart_goes_to_the_same_path_as_an_oci_artifact_signed_naming_that_path() -> None:
    chart = workflow()["jobs"]["chart"]
    script = steps_running(chart)
    assert 'helm push "dist/agentrun-operator-${VERSION}.tgz" "oci://${REGISTRY}/charts"' in script
    assert 'cosign sign --yes "${REGISTRY}/charts/agentrun-operator@${DIGEST}"' in script
    # The published chart's defaults name the registry path it was published with.
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    defaults = [
        values["image"]["repository"],
        values["runnerImage"]["repository"],
        values["gateway"]["image"]["repository"],
    ]
    prefix = "ghcr.io/agentrun/agentrun-operator/"
    assert defaults == [prefix + "operator", prefix + "runner", prefix + "gateway"]
    assert f'sed -i "s#{prefix}#${{REGISTRY}}/#" helm/agentrun-operator/values.yaml' in script


def test_the_tag_must_match_the_project_and_chart_versions() -> None:
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == version  # what the workflow's first job checks
    assert "pyproject.toml" in steps_running(workflow()["jobs"]["version"])


def test_the_github_release_carries_what_the_krew_manifest_points_at(tmp_path: Path) -> None:
    built = release_plugin.build(tmp_path, "0.1.0", release_plugin.DEFAULT_URI_BASE)
    released = steps_running(workflow()["jobs"]["plugin"])
    for path in built.values():
        assert f"dist/{path.name}" in released
    krew = yaml.safe_load(built["manifest"].read_text())
    assert (krew["kind"], krew["metadata"]["name"], krew["spec"]["version"]) == ("Plugin", "agentrun", "v0.1.0")
    (platform,) = krew["spec"]["platforms"]
    assert platform["uri"] == f"{release_plugin.DEFAULT_URI_BASE}/v0.1.0/kubectl-agentrun.tar.gz"
    assert platform["sha256"] == hashlib.sha256(built["archive"].read_bytes()).hexdigest()
    with tarfile.open(built["archive"]) as archive:
        member = archive.getmember(platform["bin"])
        assert member.mode == 0o755
        assert archive.extractfile(member).read() == built["plugin"].read_bytes()  # type: ignore[union-attr]


def test_the_plugin_file_is_reproducible(tmp_path: Path) -> None:
    first = release_plugin.build(tmp_path / "a", "0.1.0", release_plugin.DEFAULT_URI_BASE)
    second = release_plugin.build(tmp_path / "b", "0.1.0", release_plugin.DEFAULT_URI_BASE)
    assert first["archive"].read_bytes() == second["archive"].read_bytes()


def test_the_plugin_file_without_its_packages_names_the_pinned_ones_to_install(tmp_path: Path) -> None:
    built = release_plugin.build(tmp_path, "0.1.0", release_plugin.DEFAULT_URI_BASE)
    # -S: no site-packages, as on a python3 where nothing was installed.
    done = subprocess.run(
        [sys.executable, "-S", str(built["plugin"]), "--help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    pins = " ".join(release_plugin.requirements())
    assert done.stderr == f"kubectl-agentrun needs the Python package httpx: python3 -m pip install --user {pins}\n"
    assert pins.startswith("kubernetes==")
