"""`agentrun render --server-dry-run`: the cluster's API server judges each run with its installed CRD (schema,
defaults, CEL rules) in a dry-run create that stores nothing; its refusals reach the user with every field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentrun_api import constants
from agentrun_operator.cli import main
from tests.harness.release_neutral import release_neutral
from tests.harness.testbed import KubeTestbed

pytestmark = pytest.mark.integration

RUN = """
apiVersion: agentrun.dev/v1alpha1
kind: AgentRun
metadata: {name: q3}
spec:
  instructions: You are a researcher.
  input: Compare the vendors.
  model: {name: gpt-4.1-mini, apiKeySecretRef: {name: openai, key: api-key}}
  maxExecutionTime: 30m
  maxIterations: 50
"""


def render(testbed: KubeTestbed, tmp_path: Path, text: str, *args: str) -> int:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return main(["render", "-f", str(path), "--server-dry-run", "--kubeconfig", str(testbed.kubeconfig), *args])


def test_a_good_run_renders_in_the_namespace_and_nothing_is_stored(
    testbed: KubeTestbed, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert render(testbed, tmp_path, RUN, "-n", namespace) == 0

    captured = capsys.readouterr()
    assert captured.err == ""
    objects = list(yaml.safe_load_all(captured.out))
    assert "Job/q3-runner" in {f"{o['kind']}/{o['metadata']['name']}" for o in objects}
    assert {o["metadata"]["namespace"] for o in objects} == {namespace}
    agentruns = f"/apis/{constants.GROUP}/{constants.VERSION}/namespaces/{namespace}/agentruns"
    assert testbed.admin.get(f"{agentruns}/q3").status_code == 404


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            ("maxExecutionTime: 30m", "maxExecutionTime: 169h"),
            'AgentRun.agentrun.dev "q3" is invalid: spec.maxExecutionTime: Invalid value: "169h": must be at most 168h '
            "(422 Invalid)",
        ),
        (
            ("maxIterations: 50", "maxIterations: 50\n  checkpoint: {size: 1Gi}"),
            "spec.checkpoint: Invalid value: storageClassName and size apply only when store is PersistentVolumeClaim",
        ),
        (("gpt-4.1-mini,", "gpt-4.1-mini, colour: blue,"), 'strict decoding error: unknown field "spec.model.colour"'),
    ],
)
def test_a_run_the_server_refuses_is_an_error_with_its_message(
    testbed: KubeTestbed,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: tuple[str, str],
    named: str,
) -> None:
    assert render(testbed, tmp_path, RUN.replace(*change), "-n", namespace) == 1

    captured = capsys.readouterr()
    assert captured.err.startswith("error: the API server refused the run (dry run): ")
    assert release_neutral(named) in release_neutral(captured.err)
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_a_run_that_already_exists_is_named_with_what_to_do(
    testbed: KubeTestbed, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agentruns = f"/apis/{constants.GROUP}/{constants.VERSION}/namespaces/{namespace}/agentruns"
    testbed.admin.post(agentruns, json=yaml.safe_load(RUN)).raise_for_status()

    assert render(testbed, tmp_path, RUN, "-n", namespace) == 1

    assert capsys.readouterr().err == (
        f"error: AgentRun q3 already exists in namespace {namespace}, so a dry-run create cannot judge it: its spec "
        "cannot change after creation (only suspend and cancel); give the manifest a new name\n"
    )


def test_a_missing_namespace_or_context_is_a_clear_error(
    testbed: KubeTestbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert render(testbed, tmp_path, RUN, "-n", "no-such-namespace") == 1
    assert release_neutral('namespaces "no-such-namespace" not found (404 NotFound)') in release_neutral(
        capsys.readouterr().err
    )

    assert render(testbed, tmp_path, RUN, "--context", "elsewhere") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --server-dry-run: cannot load the kubeconfig: ")
    assert "elsewhere" in err
