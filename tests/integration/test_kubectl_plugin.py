"""kubectl-agentrun against the real API server, with the official Kubernetes client: as a cluster admin whose
kubeconfig context names the test's namespace, or as a user whose RBAC the test sets."""

import asyncio
import base64
import io
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentrun_operator import kubectl_plugin
from tests.harness.run_identity import AGENTRUN_API, RBAC_API
from tests.harness.source_roots import pythonpath
from tests.harness.sse_server import SseServer
from tests.harness.testbed import KubeTestbed
from tests.integration.conftest import MERGE
from tests.integration.conftest import agentrun as minimal_agentrun

pytestmark = pytest.mark.integration


def agentrun(name: str) -> dict[str, Any]:
    """A run with the request timeout and 30-minute budget that the `budget` table is checked against."""
    return minimal_agentrun(
        name,
        model={"name": "gpt-4.1-mini", "requestTimeout": "2m"},
        maxExecutionTime="30m",
        maxIterations=100,
    )


class Cluster:
    """The test's namespace, reached as a cluster admin (set-up) and through a kubeconfig for the plugin."""

    def __init__(self, testbed: KubeTestbed, namespace: str, kubeconfig: Path) -> None:
        self.testbed = testbed
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.core = f"/api/v1/namespaces/{namespace}"
        self.agentruns = f"{AGENTRUN_API}/namespaces/{namespace}/agentruns"

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
        answer = self.testbed.admin.request(method, path, json=body, headers=headers)
        assert answer.status_code < 300, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def create_run(self, name: str) -> dict[str, Any]:
        return self.call("POST", self.agentruns, agentrun(name))

    def run(self, name: str) -> dict[str, Any]:
        return self.call("GET", f"{self.agentruns}/{name}")

    def set_status(self, name: str, status: dict[str, Any]) -> None:
        self.call("PATCH", f"{self.agentruns}/{name}/status", {"status": status}, headers=MERGE)


@pytest.fixture
def cluster(testbed: KubeTestbed, namespace: str, tmp_path: Path) -> Cluster:
    control_plane = testbed.control_plane
    kubeconfig = control_plane.admin_kubeconfig_for(tmp_path / "admin.kubeconfig", namespace)
    return Cluster(testbed, namespace, kubeconfig)


async def plugin(kubeconfig: Path, *args: str) -> tuple[int, str, str]:
    """Run `kubectl agentrun ARGS` in a thread (the client is synchronous)."""
    out = io.StringIO()
    argv = ["--kubeconfig", str(kubeconfig), *args]
    with pytest.MonkeyPatch.context() as patch:
        err = io.StringIO()
        patch.setattr("sys.stderr", err)
        code = await asyncio.to_thread(kubectl_plugin.main, argv, out)
    return code, out.getvalue(), err.getvalue()


async def test_suspend_resume_and_cancel_merge_patch_only_the_users_spec_fields(cluster: Cluster) -> None:
    cluster.create_run("q3")
    cluster.set_status("q3", {"phase": "Running"})

    assert await plugin(cluster.kubeconfig, "suspend", "q3") == (0, "agentrun.agentrun.dev/q3 suspended\n", "")
    run = cluster.run("q3")
    assert run["spec"]["suspend"] is True
    assert run["status"]["phase"] == "Running"  # status is the operator's; the plugin never writes it

    assert (await plugin(cluster.kubeconfig, "resume", "q3"))[0] == 0
    assert cluster.run("q3")["spec"]["suspend"] is False

    assert (await plugin(cluster.kubeconfig, "cancel", "q3"))[1] == "agentrun.agentrun.dev/q3 cancelled\n"
    run = cluster.run("q3")
    assert run["spec"]["cancel"] is True
    # The API server's own account of who wrote what: the plugin's writes are patches of the object itself, and
    # the status subresource has only the test's write (it stands for the operator's).
    entries = run["metadata"]["managedFields"]
    plugin_entries = [e for e in entries if "f:suspend" in str(e.get("fieldsV1", {}).get("f:spec", {}))]
    assert plugin_entries
    assert all(e["operation"] == "Update" and "subresource" not in e for e in plugin_entries), entries
    status_entries = [e for e in entries if e.get("subresource") == "status"]
    assert len(status_entries) == 1
    assert "f:spec" not in status_entries[0].get("fieldsV1", {})


async def test_steering_an_ended_run_is_refused_without_a_write(cluster: Cluster) -> None:
    cluster.create_run("done")
    cluster.set_status("done", {"phase": "Succeeded"})
    before = cluster.run("done")["metadata"]["resourceVersion"]
    code, out, err = await plugin(cluster.kubeconfig, "suspend", "done")
    assert (code, out) == (1, "")
    assert err == "error: agentrun done already ended as Succeeded; nothing to suspend\n"
    after = cluster.run("done")
    assert after["spec"].get("suspend") is False
    assert after["metadata"]["resourceVersion"] == before  # not written at all


async def test_missing_run_is_one_clear_line(cluster: Cluster) -> None:
    assert await plugin(cluster.kubeconfig, "budget", "nope") == (
        1,
        "",
        f"error: agentrun nope not found in namespace {cluster.namespace}\n",
    )


async def test_namespace_flag_selects_where_the_run_is(cluster: Cluster) -> None:
    other = cluster.testbed.create_namespace("team-a")
    try:
        cluster.call("POST", f"{AGENTRUN_API}/namespaces/{other}/agentruns", agentrun("there"))
        code, out, _ = await plugin(cluster.kubeconfig, "-n", other, "result", "there")
    finally:
        cluster.testbed.delete_namespace(other)
    assert code == 0
    assert out.startswith("phase:    not reported yet\n")


def _printing_pod(name: str, run: str, text: str) -> dict[str, Any]:
    """A pod of the node agent's runner image whose container prints ``text`` and exits."""
    return {
        "metadata": {"name": name, "labels": {"agentrun.dev/run": run, "agentrun.dev/role": "runner"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "runner",
                    "image": "agentrun-runner:dev",
                    "command": ["python", "-c", f"import sys; sys.stdout.write({text!r})"],
                }
            ],
        },
    }


async def _wait_for_pod(cluster: Cluster, name: str, phases: tuple[str, ...], timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        pod = cluster.call("GET", f"{cluster.core}/pods/{name}")
        if pod.get("status", {}).get("phase") in phases:
            return pod
        assert time.monotonic() < deadline, f"pod {name} not {phases} in {timeout} s: {pod.get('status')}"
        await asyncio.sleep(0.1)


async def test_logs_print_every_runner_pod_oldest_first(cluster: Cluster) -> None:
    cluster.create_run("q3")
    # Named against creation order, so only creation (then start) time can put them in order; timestamps have
    # whole seconds, so the second pod comes more than a second after the first started.
    logs = {
        "q3-runner-zz": "iteration 1\niteration 2\nSIGTERM: checkpointed\n",
        "q3-runner-aa": "resumed at iteration 2\niteration 3",
    }
    for name, text in logs.items():
        cluster.call("POST", f"{cluster.core}/pods", _printing_pod(name, "q3", text))
        await _wait_for_pod(cluster, name, ("Succeeded",))
        await asyncio.sleep(1.1)
    other = _printing_pod("other-runner", "other", "not ours\n")
    cluster.call("POST", f"{cluster.core}/pods", other)
    await _wait_for_pod(cluster, "other-runner", ("Succeeded",))

    code, out, _ = await plugin(cluster.kubeconfig, "logs", "q3")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("==> pod q3-runner-zz (started ")
    assert lines[1:4] == ["iteration 1", "iteration 2", "SIGTERM: checkpointed"]
    assert lines[4].startswith("==> pod q3-runner-aa")
    assert lines[5:] == ["resumed at iteration 2", "iteration 3"]


async def test_logs_of_a_run_without_pods_say_why(cluster: Cluster) -> None:
    cluster.create_run("fresh")
    code, out, _ = await plugin(cluster.kubeconfig, "logs", "fresh")
    assert code == 0
    assert "has no runner pods" in out


async def test_result_prints_the_summary_and_the_full_result_from_the_configmap_store(cluster: Cluster) -> None:
    cluster.create_run("q3")
    full = "# Findings\n\nVendor B wins on price and support.\n"
    cluster.call("POST", f"{cluster.core}/configmaps", {"metadata": {"name": "q3-ckpt-0"}, "data": {"result": full}})
    result = {"summary": "Vendor B wins.", "ref": "configmap/q3-ckpt-0#result", "bytes": len(full)}
    cluster.set_status("q3", {"phase": "Succeeded", "reason": "Succeeded", "result": result})

    code, out, _ = await plugin(cluster.kubeconfig, "result", "q3")
    assert code == 0
    assert "summary:\n  Vendor B wins.\n" in out
    assert out.endswith("result:\n" + full)
    assert (await plugin(cluster.kubeconfig, "result", "q3", "--summary-only"))[1].endswith("  Vendor B wins.\n")


async def test_result_of_a_run_that_ended_without_one_says_so_as_its_status_does(cluster: Cluster) -> None:
    cluster.create_run("spent")
    message = "used 1100 tokens of the tokenBudget of 1000 before finishing"
    cluster.set_status("spent", {"phase": "Failed", "reason": "TokenBudgetExceeded", "message": message})

    code, out, _ = await plugin(cluster.kubeconfig, "result", "spent")
    assert code == 0
    assert out.startswith(f"phase:    Failed\nreason:   TokenBudgetExceeded\nmessage:  {message}\n")
    assert out.splitlines()[-1] == (
        "agentrun spent ended Failed without a stored result: a result is stored only with the agent's final answer"
    )


async def test_result_with_a_missing_store_names_it(cluster: Cluster) -> None:
    cluster.create_run("q3")
    result = {"summary": "x", "ref": "configmap/q3-ckpt-9#result", "bytes": 1}
    cluster.set_status("q3", {"phase": "Succeeded", "result": result})
    code, _, err = await plugin(cluster.kubeconfig, "result", "q3")
    assert code == 1
    assert err == f"error: ConfigMap q3-ckpt-9 (the stored result) not found in namespace {cluster.namespace}\n"


async def test_stream_reads_the_token_secret_and_follows_the_status_url(cluster: Cluster) -> None:
    events = [("iteration", '{"iteration": 1}'), ("checkpoint", '{"iteration": 1}'), ("finished", "{}")]
    with SseServer(events, drop_first_after=1, retry_ms=1) as runner:
        cluster.create_run("q3")
        cluster.set_status("q3", {"phase": "Running", "streamURL": runner.url})
        token = base64.b64encode(b"t0ken").decode()
        secret = {"metadata": {"name": "q3-stream-token"}, "data": {"token": token}}
        cluster.call("POST", f"{cluster.core}/secrets", secret)

        code, out, err = await plugin(cluster.kubeconfig, "stream", "q3")
    assert code == 0
    assert out.splitlines() == ['[1] iteration {"iteration": 1}', '[2] checkpoint {"iteration": 1}', "[3] finished {}"]
    assert [r.get("Authorization") for r in runner.requests] == ["Bearer t0ken", "Bearer t0ken"]
    assert runner.requests[1]["Last-Event-ID"] == "1"
    assert "reconnecting from event 1" in err


def with_stream_token(cluster: Cluster, run: str) -> None:
    token = base64.b64encode(b"t0ken").decode()
    secret = {"metadata": {"name": f"{run}-stream-token"}, "data": {"token": token}}
    cluster.call("POST", f"{cluster.core}/secrets", secret)


async def test_stream_of_an_ended_run_replays_what_its_stream_has_once_and_exits_0(cluster: Cluster) -> None:
    events = [("iteration", '{"iteration": 1}'), ("checkpoint", '{"iteration": 1}')]  # no `finished` to be had
    with SseServer(events, retry_ms=1) as stream:
        cluster.create_run("q3")
        cluster.set_status("q3", {"phase": "Failed", "reason": "RunnerLost", "streamURL": stream.url})
        with_stream_token(cluster, "q3")

        code, out, err = await plugin(cluster.kubeconfig, "stream", "q3", "--max-reconnects", "2")
    assert (code, out.splitlines()) == (0, ['[1] iteration {"iteration": 1}', '[2] checkpoint {"iteration": 1}'])
    assert len(stream.requests) == 1
    assert err == "the run ended Failed; its stream has nothing more after event 2 (the server closed the stream)\n"


async def test_stream_at_an_address_that_does_not_answer_fails_at_once_saying_what_to_do(cluster: Cluster) -> None:
    cluster.create_run("q3")
    cluster.set_status("q3", {"phase": "Running", "streamURL": "http://127.0.0.1:9/events"})
    with_stream_token(cluster, "q3")

    code, out, err = await plugin(cluster.kubeconfig, "stream", "q3", "--max-reconnects", "2")
    assert (code, out) == (1, "")
    assert err.startswith("error: cannot reach the stream at http://127.0.0.1:9/events (ConnectError")
    assert f"kubectl port-forward -n {cluster.namespace} svc/q3-stream 8080:stream` and pass --url" in err
    assert "reconnecting" not in err
    assert err.count("\n") == 1


async def test_logs_piped_into_head_end_quietly_when_head_stops_reading(cluster: Cluster, tmp_path: Path) -> None:
    cluster.create_run("q3")
    # Far more than a pipe holds, so the plugin is still writing when head has gone.
    text = "".join(f"iteration {n}\n" for n in range(100_000))
    pod = _printing_pod("q3-runner-a", "q3", "")
    pod["spec"]["containers"][0]["command"] = [
        "python",
        "-c",
        "import sys; sys.stdout.write(''.join(f'iteration {n}\\n' for n in range(100_000)))",
    ]
    cluster.call("POST", f"{cluster.core}/pods", pod)
    await _wait_for_pod(cluster, "q3-runner-a", ("Succeeded",))
    log = cluster.testbed.admin.get(f"{cluster.core}/pods/q3-runner-a/log")
    assert log.text == text  # the whole log is there to be read
    plugin_command = shlex.join(
        [sys.executable, "-m", "agentrun_operator.kubectl_plugin", "--kubeconfig", str(cluster.kubeconfig)]
    )
    script = (
        f"{plugin_command} logs q3 2>{tmp_path / 'stderr'} | head -n 2; echo ${{PIPESTATUS[0]}} >{tmp_path / 'status'}"
    )
    # As in a user's shell: buffered output (unbuffered text output drops what a short write leaves unwritten).
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = pythonpath()
    shell = await asyncio.create_subprocess_exec("bash", "-c", script, stdout=asyncio.subprocess.PIPE, env=env)
    shown, _ = await asyncio.wait_for(shell.communicate(), 60)

    assert shown.decode().splitlines()[1] == "iteration 0"  # after the pod's header
    assert (tmp_path / "stderr").read_text() == ""  # no traceback, no "Exception ignored"
    assert (tmp_path / "status").read_text().strip() == str(128 + signal.SIGPIPE)


async def test_stream_without_access_to_the_token_secret_asks_for_token(cluster: Cluster, tmp_path: Path) -> None:
    cluster.create_run("q3")
    cluster.set_status("q3", {"phase": "Running", "streamURL": "http://127.0.0.1:9/events"})
    cluster.call("POST", f"{cluster.core}/secrets", {"metadata": {"name": "q3-stream-token"}, "data": {"token": ""}})
    # A user who may read AgentRuns here but not Secrets: the real RBAC authorizer refuses the Secret.
    cluster.call("POST", f"{cluster.core}/serviceaccounts", {"metadata": {"name": "viewer"}})
    rbac = f"{RBAC_API}/namespaces/{cluster.namespace}"
    rule = {"apiGroups": ["agentrun.dev"], "resources": ["agentruns"], "verbs": ["get", "list", "watch"]}
    cluster.call("POST", f"{rbac}/roles", {"metadata": {"name": "run-viewer"}, "rules": [rule]})
    binding = {
        "metadata": {"name": "viewer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "run-viewer"},
        "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": cluster.namespace}],
    }
    cluster.call("POST", f"{rbac}/rolebindings", binding)
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}}
    token = cluster.call("POST", f"{cluster.core}/serviceaccounts/viewer/token", request)["status"]["token"]
    kubeconfig = cluster.testbed.control_plane.kubeconfig_for_token(
        tmp_path / "viewer.kubeconfig",
        token,
        user=f"system:serviceaccount:{cluster.namespace}:viewer",
        namespace=cluster.namespace,
    )

    code, _, err = await plugin(kubeconfig, "stream", "q3")
    assert code == 1
    assert err == (
        f"error: cannot read Secret q3-stream-token in namespace {cluster.namespace} (403); "
        "pass the stream token with --token\n"
    )


async def test_stream_before_the_run_has_a_url_says_how_to_reach_it(cluster: Cluster) -> None:
    cluster.create_run("q3")
    code, _, err = await plugin(cluster.kubeconfig, "stream", "q3")
    assert code == 1
    assert "no status.streamURL yet" in err
    assert "q3-stream" in err


async def test_budget_prints_the_table_from_status(cluster: Cluster) -> None:
    cluster.create_run("q3")
    budget = {"worstCaseSeconds": 12000, "maxExecutionSeconds": 1800, "fits": False, "activeDeadlineSeconds": 1800}
    cluster.set_status("q3", {"phase": "Running", "budget": budget})
    code, out, _ = await plugin(cluster.kubeconfig, "budget", "q3", "--controller", "gke-ingress")
    assert code == 0
    own, chain = out.split("\n\n")
    header, run_row, deadline_row, call_row = own.splitlines()
    assert header.split() == ["HOP", "TIMER", "SET", "NEEDED", "OK"]
    assert run_row.split()[-1] == "WARN"
    assert "3h20m worst case" in run_row
    assert deadline_row.split()[-1] == "OK"
    assert "2m" in call_row
    title, chain_header, *hops = chain.splitlines()
    assert title.startswith("stream path, reader to runner, behind gke-ingress")
    assert chain_header.split()[:2] == ["HOP", "TIMER"]
    # GKE's BackendConfig timeoutSec is a whole-response timer: it must cover the run's 30 minutes.
    assert any("timeoutSec" in hop for hop in hops)
