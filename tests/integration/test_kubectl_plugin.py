"""kubectl-agentrun against the emulated API server over real HTTP, with the official Kubernetes client."""

import asyncio
import base64
import io
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agentrun_operator import kubectl_plugin
from tests.harness.apiserver import EmulatedApiServer
from tests.harness.local_cluster import REPO_ROOT
from tests.harness.sse_server import SseServer
from tests.integration.conftest import AGENTRUNS, MERGE
from tests.integration.conftest import agentrun as minimal_agentrun

pytestmark = pytest.mark.integration

CORE = "/api/v1/namespaces/default"


def agentrun(name: str) -> dict[str, Any]:
    """A run with the request timeout and 30-minute budget that the `budget` table is checked against."""
    return minimal_agentrun(
        name,
        model={"name": "gpt-4.1-mini", "requestTimeout": "2m"},
        maxExecutionTime="30m",
        maxIterations=100,
    )


async def call(http: aiohttp.ClientSession, method: str, path: str, body: Any, **kwargs: Any) -> dict[str, Any]:
    async with http.request(method, path.lstrip("/"), json=body, **kwargs) as response:
        assert response.status < 300, await response.text()
        result: dict[str, Any] = await response.json()
        return result


async def set_status(http: aiohttp.ClientSession, name: str, status: dict[str, Any]) -> None:
    await call(http, "PATCH", f"{AGENTRUNS}/{name}/status", {"status": status}, headers=MERGE)


async def plugin(apiserver: EmulatedApiServer, *args: str) -> tuple[int, str, str]:
    """Run `kubectl agentrun ARGS` in a thread (the client is synchronous; the emulator serves on this loop)."""
    out = io.StringIO()
    argv = ["--kubeconfig", str(apiserver.kubeconfig_path), *args]
    with pytest.MonkeyPatch.context() as patch:
        err = io.StringIO()
        patch.setattr("sys.stderr", err)
        code = await asyncio.to_thread(kubectl_plugin.main, argv, out)
    return code, out.getvalue(), err.getvalue()


async def test_suspend_resume_and_cancel_merge_patch_only_the_users_spec_fields(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    await call(http, "POST", AGENTRUNS, agentrun("q3"))
    await set_status(http, "q3", {"phase": "Running"})

    assert await plugin(apiserver, "suspend", "q3") == (0, "agentrun.agentrun.dev/q3 suspended\n", "")
    run = apiserver.store.try_get("AgentRun", "default", "q3")
    assert run is not None
    assert run["spec"]["suspend"] is True
    assert run["status"]["phase"] == "Running"  # status is the operator's; the plugin never writes it

    assert (await plugin(apiserver, "resume", "q3"))[0] == 0
    assert apiserver.store.get(apiserver.registry.find("agentruns"), "default", "q3")["spec"]["suspend"] is False

    assert (await plugin(apiserver, "cancel", "q3"))[1] == "agentrun.agentrun.dev/q3 cancelled\n"
    assert apiserver.store.get(apiserver.registry.find("agentruns"), "default", "q3")["spec"]["cancel"] is True
    patches = [r for r in apiserver.requests if r.verb == "patch" and r.resource == "agentruns"]
    assert [r.subresource for r in patches if r.subresource != "status"] == ["", "", ""]


async def test_steering_an_ended_run_is_refused_without_a_write(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    await call(http, "POST", AGENTRUNS, agentrun("done"))
    await set_status(http, "done", {"phase": "Succeeded"})
    code, out, err = await plugin(apiserver, "suspend", "done")
    assert (code, out) == (1, "")
    assert err == "error: agentrun done already ended as Succeeded; nothing to suspend\n"
    assert apiserver.store.get(apiserver.registry.find("agentruns"), "default", "done")["spec"].get("suspend") is False


async def test_missing_run_is_one_clear_line(apiserver: EmulatedApiServer) -> None:
    assert await plugin(apiserver, "budget", "nope") == (1, "", "error: agentrun nope not found in namespace default\n")


async def test_namespace_flag_selects_where_the_run_is(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    await call(http, "POST", "/api/v1/namespaces", {"metadata": {"name": "team-a"}})
    await call(http, "POST", AGENTRUNS.replace("/default/", "/team-a/"), agentrun("there"))
    code, out, _ = await plugin(apiserver, "-n", "team-a", "result", "there")
    assert code == 0
    assert out.startswith("phase:    not reported yet\n")


async def test_logs_print_every_runner_pod_oldest_first(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    await call(http, "POST", AGENTRUNS, agentrun("q3"))
    # Named against creation order, so only creation (then start) time can put them in order.
    for name, started in (("q3-runner-zz", "2026-01-01T10:00:00Z"), ("q3-runner-aa", "2026-01-01T10:05:00Z")):
        pod = {
            "metadata": {"name": name, "labels": {"agentrun.dev/run": "q3", "agentrun.dev/role": "runner"}},
            "spec": {"containers": [{"name": "runner", "image": "agentrun-runner:dev"}]},
        }
        await call(http, "POST", f"{CORE}/pods", pod)
        await call(http, "PATCH", f"{CORE}/pods/{name}/status", {"status": {"startTime": started}}, headers=MERGE)
    other = {
        "metadata": {"name": "other-runner", "labels": {"agentrun.dev/run": "other"}},
        "spec": {"containers": [{"name": "runner", "image": "x"}]},
    }
    await call(http, "POST", f"{CORE}/pods", other)
    apiserver.pod_logs[("default", "q3-runner-zz")] = "iteration 1\niteration 2\nSIGTERM: checkpointed\n"
    apiserver.pod_logs[("default", "q3-runner-aa")] = "resumed at iteration 2\niteration 3"
    apiserver.pod_logs[("default", "other-runner")] = "not ours\n"

    code, out, _ = await plugin(apiserver, "logs", "q3")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("==> pod q3-runner-zz (started 2026-01-01T10:00:00+00:00")
    assert lines[1:4] == ["iteration 1", "iteration 2", "SIGTERM: checkpointed"]
    assert lines[4].startswith("==> pod q3-runner-aa")
    assert lines[5:] == ["resumed at iteration 2", "iteration 3"]


async def test_logs_of_a_run_without_pods_say_why(apiserver: EmulatedApiServer, http: aiohttp.ClientSession) -> None:
    await call(http, "POST", AGENTRUNS, agentrun("fresh"))
    code, out, _ = await plugin(apiserver, "logs", "fresh")
    assert code == 0
    assert "has no runner pods" in out


async def test_result_prints_the_summary_and_the_full_result_from_the_configmap_store(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    await call(http, "POST", AGENTRUNS, agentrun("q3"))
    full = "# Findings\n\nVendor B wins on price and support.\n"
    await call(http, "POST", f"{CORE}/configmaps", {"metadata": {"name": "q3-ckpt-0"}, "data": {"result": full}})
    result = {"summary": "Vendor B wins.", "ref": "configmap/q3-ckpt-0#result", "bytes": len(full)}
    await set_status(http, "q3", {"phase": "Succeeded", "reason": "Succeeded", "result": result})

    code, out, _ = await plugin(apiserver, "result", "q3")
    assert code == 0
    assert "summary:\n  Vendor B wins.\n" in out
    assert out.endswith("result:\n" + full)
    assert (await plugin(apiserver, "result", "q3", "--summary-only"))[1].endswith("  Vendor B wins.\n")


async def test_result_of_a_run_that_ended_without_one_says_so_as_its_status_does(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    await call(http, "POST", AGENTRUNS, agentrun("spent"))
    message = "used 1100 tokens of the tokenBudget of 1000 before finishing"
    await set_status(http, "spent", {"phase": "Failed", "reason": "TokenBudgetExceeded", "message": message})

    code, out, _ = await plugin(apiserver, "result", "spent")
    assert code == 0
    assert out.startswith(f"phase:    Failed\nreason:   TokenBudgetExceeded\nmessage:  {message}\n")
    assert out.splitlines()[-1] == (
        "agentrun spent ended Failed without a stored result: a result is stored only with the agent's final answer"
    )


async def test_result_with_a_missing_store_names_it(apiserver: EmulatedApiServer, http: aiohttp.ClientSession) -> None:
    await call(http, "POST", AGENTRUNS, agentrun("q3"))
    result = {"summary": "x", "ref": "configmap/q3-ckpt-9#result", "bytes": 1}
    await set_status(http, "q3", {"phase": "Succeeded", "result": result})
    code, _, err = await plugin(apiserver, "result", "q3")
    assert code == 1
    assert err == "error: ConfigMap q3-ckpt-9 (the stored result) not found in namespace default\n"


async def test_stream_reads_the_token_secret_and_follows_the_status_url(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    events = [("iteration", '{"iteration": 1}'), ("checkpoint", '{"iteration": 1}'), ("finished", "{}")]
    with SseServer(events, drop_first_after=1, retry_ms=1) as runner:
        await call(http, "POST", AGENTRUNS, agentrun("q3"))
        await set_status(http, "q3", {"phase": "Running", "streamURL": runner.url})
        token = base64.b64encode(b"t0ken").decode()
        await call(http, "POST", f"{CORE}/secrets", {"metadata": {"name": "q3-stream-token"}, "data": {"token": token}})

        code, out, err = await plugin(apiserver, "stream", "q3")
    assert code == 0
    assert out.splitlines() == ['[1] iteration {"iteration": 1}', '[2] checkpoint {"iteration": 1}', "[3] finished {}"]
    assert [r.get("Authorization") for r in runner.requests] == ["Bearer t0ken", "Bearer t0ken"]
    assert runner.requests[1]["Last-Event-ID"] == "1"
    assert "reconnecting from event 1" in err


async def with_stream_token(http: aiohttp.ClientSession, run: str) -> None:
    token = base64.b64encode(b"t0ken").decode()
    await call(http, "POST", f"{CORE}/secrets", {"metadata": {"name": f"{run}-stream-token"}, "data": {"token": token}})


async def test_stream_of_an_ended_run_replays_what_its_stream_has_once_and_exits_0(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    events = [("iteration", '{"iteration": 1}'), ("checkpoint", '{"iteration": 1}')]  # no `finished` to be had
    with SseServer(events, retry_ms=1) as stream:
        await call(http, "POST", AGENTRUNS, agentrun("q3"))
        await set_status(http, "q3", {"phase": "Failed", "reason": "RunnerLost", "streamURL": stream.url})
        await with_stream_token(http, "q3")

        code, out, err = await plugin(apiserver, "stream", "q3", "--max-reconnects", "2")
    assert (code, out.splitlines()) == (0, ['[1] iteration {"iteration": 1}', '[2] checkpoint {"iteration": 1}'])
    assert len(stream.requests) == 1
    assert err == "the run ended Failed; its stream has nothing more after event 2 (the server closed the stream)\n"


async def test_stream_at_an_address_that_does_not_answer_fails_at_once_saying_what_to_do(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    await call(http, "POST", AGENTRUNS, agentrun("q3"))
    await set_status(http, "q3", {"phase": "Running", "streamURL": "http://127.0.0.1:9/events"})
    await with_stream_token(http, "q3")

    code, out, err = await plugin(apiserver, "stream", "q3", "--max-reconnects", "2")
    assert (code, out) == (1, "")
    assert err.startswith("error: cannot reach the stream at http://127.0.0.1:9/events (ConnectError")
    assert "kubectl port-forward -n default svc/q3-stream 8080:stream` and pass --url" in err
    assert "reconnecting" not in err
    assert err.count("\n") == 1


async def test_logs_piped_into_head_end_quietly_when_head_stops_reading(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    await call(http, "POST", AGENTRUNS, agentrun("q3"))
    pod = {
        "metadata": {"name": "q3-runner-a", "labels": {"agentrun.dev/run": "q3"}},
        "spec": {"containers": [{"name": "runner", "image": "agentrun-runner:dev"}]},
    }
    await call(http, "POST", f"{CORE}/pods", pod)
    # Far more than a pipe holds, so the plugin is still writing when head has gone.
    apiserver.pod_logs[("default", "q3-runner-a")] = "".join(f"iteration {n}\n" for n in range(100_000))
    plugin_command = shlex.join(
        [sys.executable, "-m", "agentrun_operator.kubectl_plugin", "--kubeconfig", str(apiserver.kubeconfig_path)]
    )
    script = (
        f"{plugin_command} logs q3 2>{tmp_path / 'stderr'} | head -n 2; echo ${{PIPESTATUS[0]}} >{tmp_path / 'status'}"
    )
    # As in a user's shell: buffered output (unbuffered text output drops what a short write leaves unwritten).
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = os.pathsep.join(str(REPO_ROOT / part) for part in ("api", "operator"))
    shell = await asyncio.create_subprocess_exec("bash", "-c", script, stdout=asyncio.subprocess.PIPE, env=env)
    shown, _ = await asyncio.wait_for(shell.communicate(), 60)

    assert shown.decode().splitlines()[1] == "iteration 0"  # after the pod's header
    assert (tmp_path / "stderr").read_text() == ""  # no traceback, no "Exception ignored"
    assert (tmp_path / "status").read_text().strip() == str(128 + signal.SIGPIPE)


async def test_stream_without_access_to_the_token_secret_asks_for_token(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    await call(http, "POST", AGENTRUNS, agentrun("q3"))
    await set_status(http, "q3", {"phase": "Running", "streamURL": "http://127.0.0.1:9/events"})
    apiserver.faults.inject(403, match=lambda record: record.resource == "secrets")
    code, _, err = await plugin(apiserver, "stream", "q3")
    assert code == 1
    assert (
        err
        == "error: cannot read Secret q3-stream-token in namespace default (403); pass the stream token with --token\n"
    )


async def test_stream_before_the_run_has_a_url_says_how_to_reach_it(
    apiserver: EmulatedApiServer, http: aiohttp.ClientSession
) -> None:
    await call(http, "POST", AGENTRUNS, agentrun("q3"))
    code, _, err = await plugin(apiserver, "stream", "q3")
    assert code == 1
    assert "no status.streamURL yet" in err
    assert "q3-stream" in err


async def test_budget_prints_the_table_from_status(apiserver: EmulatedApiServer, http: aiohttp.ClientSession) -> None:
    await call(http, "POST", AGENTRUNS, agentrun("q3"))
    budget = {"worstCaseSeconds": 12000, "maxExecutionSeconds": 1800, "fits": False, "activeDeadlineSeconds": 1860}
    await set_status(http, "q3", {"phase": "Running", "budget": budget})
    code, out, _ = await plugin(apiserver, "budget", "q3", "--controller", "gke-ingress")
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
