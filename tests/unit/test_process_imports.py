"""What each process image holds is what it imports: the runner never loads the official Kubernetes client
(its image does not have it) nor the other processes' packages, and the gateway loads neither the operator's nor
the runner's package nor their dependencies (its image has only api/, common/ and gateway/)."""

import subprocess
import sys

import pytest

from tests.harness.source_roots import GATEWAY_IMAGE_FOLDERS, pythonpath

pytestmark = pytest.mark.unit


RUNNER_IMAGE_FOLDERS = ("api", "common", "runner_image")


def loaded_after(statement: str, folders: tuple[str, ...]) -> set[str]:
    probe = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": pythonpath(folders)},
        capture_output=True,
        text=True,
        check=True,
    )
    return {name.split(".")[0] for name in done.stdout.split()}


def test_runner_with_a_kubeconfig_loads_no_kubernetes_package() -> None:
    loaded = loaded_after(
        "import agentrun_runner.__main__, agentrun_runner.kube as kube, tempfile, pathlib; "
        "path = pathlib.Path(tempfile.mkdtemp()) / 'config'; "
        "path.write_text('current-context: c\\ncontexts: [{name: c, context: {cluster: k, user: u}}]\\n'"
        "'clusters: [{name: k, cluster: {server: \"http://127.0.0.1:1\"}}]\\nusers: [{name: u, user: {token: t}}]\\n'); "
        "import os; os.environ['KUBECONFIG'] = str(path); kube.load_configuration()",
        RUNNER_IMAGE_FOLDERS,
    )
    assert "agentrun_runner" in loaded
    assert "kubernetes" not in loaded


def test_runner_loads_neither_the_operator_nor_the_gateway() -> None:
    loaded = loaded_after(
        "import agentrun_runner.__main__, agentrun_runner.stream, agentrun_runner.archive, agentrun_runner.checkpoint",
        RUNNER_IMAGE_FOLDERS,
    )
    assert {"agentrun_runner", "agentrun_common"} <= loaded
    assert "agentrun_operator" not in loaded
    assert "agentrun_gateway" not in loaded


def test_gateway_loads_neither_the_operator_nor_the_runner_nor_their_dependencies() -> None:
    loaded = loaded_after(
        "import agentrun_gateway.__main__, agentrun_gateway.server, agentrun_gateway.archive", GATEWAY_IMAGE_FOLDERS
    )
    assert {"agentrun_gateway", "agentrun_common"} <= loaded
    for package in ("agentrun_operator", "kopf", "kubernetes", "openai", "agentrun_runner"):
        assert package not in loaded


def test_neither_the_runner_nor_the_operator_loads_the_mcp_sdk_before_an_mcp_server_is_used() -> None:
    """The SDK's imports cost a runner about half a second of its start (a resume's time to its first model call)
    and the operator about 30 MiB: they are loaded at a run's first MCP call and at the first listing."""
    runner = loaded_after("import agentrun_runner.__main__, agentrun_runner.tools", RUNNER_IMAGE_FOLDERS)
    operator = loaded_after("import agentrun_operator.handlers", ("api", "common", "operator"))
    assert "agentrun_runner" in runner
    assert "agentrun_operator" in operator
    for loaded in (runner, operator):
        assert "mcp" not in loaded
        assert "mcp_types" not in loaded
