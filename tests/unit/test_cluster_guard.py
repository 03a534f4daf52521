"""The cluster tests' guard: skipped without the opt-in, refused on a context not named for testing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cluster.conftest import refusal
from tests.harness.chart import REPO_ROOT

pytestmark = pytest.mark.unit


def kubeconfig(tmp_path: Path, context: str) -> Path:
    # An API server address nothing listens on: a test that got past the guard fails to connect, fast.
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": context, "context": {"cluster": "c", "user": "u"}}],
                "current-context": context,
            }
        )
    )
    return path


def run_cluster_tests(env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTRUN_E2E", "KUBECONFIG"))}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/cluster",
            "-m",
            "cluster",
            "-p",
            "no:cacheprovider",
            "-q",
            "-k",
            "crd_is_established",
        ],
        cwd=REPO_ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout + result.stderr


def test_cluster_tests_skip_with_the_reason_without_the_opt_in(tmp_path: Path) -> None:
    output = run_cluster_tests({"KUBECONFIG": str(kubeconfig(tmp_path, "kind-agentrun"))})
    assert "1 skipped" in output
    assert "set AGENTRUN_E2E_CLUSTER=1" in output


def test_cluster_tests_refuse_a_context_not_named_for_testing(tmp_path: Path) -> None:
    output = run_cluster_tests({"AGENTRUN_E2E_CLUSTER": "1", "KUBECONFIG": str(kubeconfig(tmp_path, "prod-eu"))})
    assert "refusing kubeconfig context 'prod-eu'" in output
    assert "1 error" in output


@pytest.mark.parametrize("context", ["kind-agentrun", "ci-test-cluster", "kind-"])
def test_contexts_named_for_testing_are_allowed(context: str) -> None:
    assert refusal(context, {}) is None


@pytest.mark.parametrize("context", ["prod-eu", "gke_company_europe-west1_main", "kind"])
def test_other_contexts_are_refused_unless_overridden(context: str) -> None:
    reason = refusal(context, {})
    assert reason is not None
    assert "AGENTRUN_E2E_ALLOW_ANY_CONTEXT=1" in reason
    assert refusal(context, {"AGENTRUN_E2E_ALLOW_ANY_CONTEXT": "1"}) is None
    assert refusal(context, {"AGENTRUN_E2E_ALLOW_ANY_CONTEXT": "yes"}) is not None


def test_cluster_tests_go_ahead_on_a_kind_context(tmp_path: Path) -> None:
    output = run_cluster_tests({"AGENTRUN_E2E_CLUSTER": "1", "KUBECONFIG": str(kubeconfig(tmp_path, "kind-agentrun"))})
    assert "refusing" not in output
    assert "1 failed" in output  # got past the guard, then found no API server at the address
