"""What e2e tests do with AgentRuns on a LocalCluster: build one, wait on its status, find its pods,
read back the conversation the model saw, and drive kubectl as a user would."""

import asyncio
import collections
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.agentruns import agent_run, requests_of, wait_for_status
from tests.harness.local_cluster import LocalCluster, OperatorTimings
from tests.harness.model_server import ChatRequest, ModelServer, Reply, Script, research_script
from tests.harness.nodeagent.kube import JsonObject, KubeClient
from tests.harness.runner import ToolServer
from tests.harness.testbed import KubeTestbed

FINAL_ANSWER = "The report is in report.md: vendor B is cheapest, vendor A is fastest."
KUBECTL = Path(sys.executable).parent / "kubectl"


@contextlib.asynccontextmanager
async def local_cluster(
    testbed: KubeTestbed,
    state_dir: Path,
    script: Script,
    *,
    scripted: bool = True,
    timings: OperatorTimings | None = None,
    operator_behind_proxy: bool = False,
    from_chart: bool = False,
) -> AsyncIterator[LocalCluster]:
    """A LocalCluster in a fresh namespace answering model calls with ``script``, with the Secret runs name
    (``model-key``). With ``scripted``, skips where OPENAI_BASE_URL points runs at a real endpoint (the test
    reads the scripted server's records). With ``operator_behind_proxy``, the operator's API requests go
    through ``cluster.api_proxy``, which can fail them."""
    async with LocalCluster(
        testbed,
        state_dir,
        model_script=script,
        timings=timings or OperatorTimings(),
        operator_behind_proxy=operator_behind_proxy,
        from_chart=from_chart,
    ) as running:
        if scripted:
            needs_scripted_model(running)
        await running.create_model_secret("model-key", "api-key")
        yield running


def needs_scripted_model(cluster: LocalCluster) -> None:
    if cluster.model.real:
        pytest.skip("needs the scripted model's slow, multi-step answers; a real endpoint (OPENAI_BASE_URL) is set")


def fetching_run(name: str, cluster: LocalCluster, **spec: Any) -> JsonObject:
    """An AgentRun whose http_fetch may reach the tool server (on 127.0.0.1, which pods share with the test
    process), its stream off unless ``spec`` turns it on."""
    defaults: dict[str, Any] = {
        "tools": {"httpFetch": {"allowedHosts": ["127.0.0.1"]}},
        "streaming": {"enabled": False},
        "checkpoint": {"store": "PersistentVolumeClaim"},
    }
    return agent_run(name, cluster, **{**defaults, **spec})


# Tool server paths the research agent fetches; the slow one keeps a fetch in flight long enough for a
# kill to land in the middle of it (the server still executes it, and a resumed runner must replay its key).
SOURCES = ("sources/vendor-a", "slow/0.6", "sources/vendor-c")


def fetching_script(tools: ToolServer, delay: float = 0.3, sources: Sequence[str] = SOURCES) -> Script:
    """The research agent, fetching ``sources`` from the tool server in one parallel step."""
    return research_script(fetch_urls=[tools.url(source) for source in sources], delay=delay)


def with_model_faults(script: Script, run: str, faults_by_turn: Mapping[int, Sequence[Reply]]) -> Script:
    """``script``, except that one run's first requests at a turn get that turn's faults, in order
    (a retry of the same call is the next request at the same turn)."""
    served: collections.Counter[int] = collections.Counter()
    marker = f"(run {run})"

    def faulty(request: ChatRequest) -> Reply:
        if any(marker in str(m.get("content")) for m in request.messages):
            faults = faults_by_turn.get(request.turn, ())
            if served[request.turn] < len(faults):
                served[request.turn] += 1
                return faults[served[request.turn] - 1]
        return script(request)

    return faulty


async def wait_for_iteration(kube: KubeClient, name: str, iteration: int, timeout: float = 45.0) -> JsonObject:
    """Until the run has checkpointed ``iteration`` steps."""
    return await wait_for_status(
        kube,
        name,
        lambda s: (s.get("lastCheckpoint") or {}).get("iteration", 0) >= iteration,
        f"a checkpoint at iteration {iteration}",
        timeout,
    )


def assert_result(status: JsonObject) -> None:
    """A Succeeded run shows its result: the research agent's final answer."""
    assert status.get("result"), f"no result in the status of a {status.get('phase')} run: {status}"
    assert status["result"]["summary"] == FINAL_ANSWER


def runner_logs(cluster: LocalCluster) -> str:
    """Every pod's output, for an assertion message that explains a failed run."""
    return "\n".join(
        f"--- {ns}/{pod}\n{cluster.node.read_log(ns, pod)}"
        for ns, pod in cluster.node.agent.pod_keys()
        if ns == cluster.namespace
    )


def condition(status: JsonObject, kind: str) -> JsonObject | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def conversation(model: ModelServer, run: str, uid: str) -> list[dict[str, Any]]:
    """The longest conversation the run sent the model, with the run's name and uid blanked out, so
    runs of the same script compare equal."""
    requests = requests_of(model, run)
    assert requests, f"run {run} never called the model"
    longest = max(requests, key=lambda r: len(r.messages))
    text = json.dumps(longest.messages).replace(uid, "<uid>").replace(f"(run {run})", "(run <name>)")
    normalized: list[dict[str, Any]] = json.loads(text)
    return normalized


@dataclass(frozen=True)
class ToolLedger:
    """What the tool server saw of one run: keys executed, and requests delivered (replays included)."""

    executions: Mapping[str, int]
    deliveries: Mapping[str, int]


def tool_ledger(tools: ToolServer, uid: str) -> ToolLedger:
    return ToolLedger(
        executions={k: n for k, n in tools.executions.items() if k.startswith(f"{uid}:")},
        deliveries={k: n for k, n in tools.deliveries.items() if k.startswith(f"{uid}:")},
    )


def assert_each_source_fetched_once(tools: ToolServer, uid: str, sources: Sequence[str] = SOURCES) -> ToolLedger:
    """Nothing lost (every fetch executed) and nothing duplicated (one key per fetch, each executed once:
    a resumed runner that minted new keys for old calls would show up here as extra keys)."""
    ledger = tool_ledger(tools, uid)
    assert len(ledger.executions) == len(sources), ledger
    assert set(ledger.executions.values()) == {1}, ledger
    assert tools.requests_without_key == 0
    return ledger


async def kubectl(cluster: LocalCluster, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Run kubectl against the cluster; returns (exit code, stdout, stderr)."""
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig_path)}
    process = await asyncio.create_subprocess_exec(
        str(KUBECTL),
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin is not None else None), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
