"""AgentRuns on a LocalCluster, for e2e tests and benchmarks: build one, wait on its status, find its
pods, and tell its model calls apart at the scripted model server."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tests.harness.local_cluster import LocalCluster
from tests.harness.model_server import ChatRequest, ModelServer
from tests.harness.nodeagent.kube import JsonObject, KubeClient, namespaced_path


def agentruns_path(namespace: str) -> str:
    return namespaced_path("agentrun.dev/v1alpha1", "agentruns", namespace)


TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "TimedOut", "Cancelled"})
T = TypeVar("T")


def agent_run(name: str, cluster: LocalCluster, **spec: Any) -> JsonObject:
    """A valid AgentRun against the cluster's model; ``spec`` fields (camelCase) replace the defaults.

    The run's name is in its input, so the model server's requests can be told apart by run."""
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": name, "namespace": cluster.namespace},
        "spec": {
            "instructions": "You are a careful research assistant.",
            "input": f"Compare three vendors and write a report (run {name}).",
            "model": {
                "name": cluster.model.model,
                "baseURL": cluster.model.base_url,
                "apiKeySecretRef": {"name": "model-key", "key": "api-key"},
            },
            "maxExecutionTime": "2m",
            "maxIterations": 10,
            **spec,
        },
    }


async def wait_for(probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 45.0) -> T:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if last := await probe():
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def run_object(kube: KubeClient, name: str) -> JsonObject:
    run = await kube.get(f"{agentruns_path(kube.namespace)}/{name}")
    assert run is not None, f"AgentRun {name} is gone"
    return run


async def run_status(kube: KubeClient, name: str) -> JsonObject:
    status: JsonObject = (await run_object(kube, name)).get("status") or {}
    return status


async def wait_for_status(
    kube: KubeClient, name: str, accept: Callable[[JsonObject], bool], what: str, timeout: float = 45.0
) -> JsonObject:
    async def probe() -> JsonObject | None:
        status = await run_status(kube, name)
        return status if accept(status) else None

    return await wait_for(probe, f"run {name}: {what}", timeout)


async def wait_for_end(kube: KubeClient, name: str, timeout: float = 45.0) -> JsonObject:
    return await wait_for_status(kube, name, lambda s: s.get("phase") in TERMINAL_PHASES, "to end", timeout)


async def runner_pods(kube: KubeClient, run: str) -> list[JsonObject]:
    pods = await kube.list(namespaced_path("v1", "pods", kube.namespace))
    return [
        p for p in pods if (p["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") == f"{run}-runner"
    ]


def requests_of(model: ModelServer, run: str) -> list[ChatRequest]:
    """The model calls one run made, told apart by the run name in its input."""
    marker = f"(run {run})"
    return [r for r in model.requests if any(marker in str(m.get("content")) for m in r.messages)]
