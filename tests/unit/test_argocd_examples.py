"""The Argo CD example Applications point at real paths and carry values the chart accepts."""

from typing import Any

import pytest
import yaml

from tests.harness.chart import REPO_ROOT, find, render_objects

pytestmark = pytest.mark.unit

EXAMPLES = REPO_ROOT / "examples" / "argocd"


def application(name: str) -> dict[str, Any]:
    app: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    assert app["apiVersion"] == "argoproj.io/v1alpha1"
    assert app["kind"] == "Application"
    return app


def test_operator_application_installs_this_chart_with_values_the_schema_accepts() -> None:
    source = application("agentrun-operator.yaml")["spec"]["source"]
    assert (REPO_ROOT / source["path"] / "Chart.yaml").is_file()
    # Rendering through the Helm engine applies values.schema.json: a misspelt key in the example fails here.
    objects = render_objects(source["helm"]["valuesObject"])
    assert find(objects, "Deployment")


def test_operator_application_uses_server_side_apply_for_the_large_crd() -> None:
    sync_options = application("agentrun-operator.yaml")["spec"]["syncPolicy"]["syncOptions"]
    assert "ServerSideApply=true" in sync_options


def test_runs_application_needs_no_ignore_differences() -> None:
    spec = application("agentruns.yaml")["spec"]
    assert "ignoreDifferences" not in spec
