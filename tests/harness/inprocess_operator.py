"""Run the real kopf operator in-process against the emulated API server, and drive its children.

There is no kubelet or Job controller behind the emulated API server, so the tests play their part:
they start runner pods for a Job, write pod and Job status, and write the runner's progress report,
straight into the emulator's store (those writes are not API requests of the operator's).
"""

import asyncio
import contextlib
import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import kopf

import agentrun_operator.handlers  # noqa: F401 - registers the handlers with kopf's default registry
from agentrun_api import constants, contract
from agentrun_operator.permits.settings import PermitSettings
from agentrun_operator.settings import OperatorSettings
from tests.harness.apiserver import EmulatedApiServer

NAMESPACE = "default"
MERGE = "application/merge-patch+json"
T = TypeVar("T")

# Short intervals so a test sees in seconds what takes minutes in production.
FAST = OperatorSettings(
    runner_image="registry.example/agentrun-runner:test",
    status_min_interval_seconds=0.3,
    progress_interval_seconds=0.2,
    metrics_port=0,
    health_port=0,
    supervise_interval_seconds=0.5,
    outcome_grace_seconds=1.0,
    webhook_backoff_seconds=0.2,
    webhook_backoff_max_seconds=1.0,
    webhook_timeout_seconds=2.0,
    retry_delay_seconds=0.5,
    permits=PermitSettings(host="127.0.0.1", port=0, lease_seconds=1.0, status_interval_seconds=0.5),
)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_manifest(name: str = "q3", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "instructions": "You are a careful researcher.",
        "input": "Compare the three vendors.",
        "model": {
            "name": "gpt-4.1-mini",
            "apiKeySecretRef": {"name": "openai", "key": "api-key"},
            "requestTimeout": "30s",
        },
        "maxExecutionTime": "30m",
        "maxIterations": 50,
    }
    body.update(spec)
    return {"apiVersion": constants.API_VERSION, "kind": constants.KIND, "metadata": {"name": name}, "spec": body}


@dataclasses.dataclass
class OperatorProcess:
    task: asyncio.Task[None]
    stop_flag: asyncio.Event
    memo: kopf.Memo

    async def stop(self) -> None:
        self.stop_flag.set()
        await asyncio.wait_for(self.task, timeout=15)

    async def kill(self) -> None:
        """Stop abruptly, as a killed pod would: no cleanup, no goodbye."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


class ShiftableClock:
    """The operator's clock, which a test moves forward instead of waiting out a deadline."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def __deepcopy__(self, memo: dict[int, Any]) -> "ShiftableClock":
        # kopf copies its memo; the copies must share the one clock the test moves.
        return self


async def start_operator(
    apiserver: EmulatedApiServer, settings: OperatorSettings = FAST, clock: ShiftableClock | None = None
) -> OperatorProcess:
    stop_flag, ready_flag = asyncio.Event(), asyncio.Event()
    memo = kopf.Memo(operator_settings=settings, clock=clock)
    # The operator logs in from KUBECONFIG at start-up (as in a pod it would from its service account);
    # the variable is restored once it has, so no later test talks to this test's API server.
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(apiserver.kubeconfig_path)
    try:
        task = asyncio.create_task(
            kopf.operator(
                registry=kopf.get_default_registry(),
                clusterwide=True,
                standalone=True,
                memo=memo,
                stop_flag=stop_flag,
                ready_flag=ready_flag,
            )
        )
        await asyncio.wait_for(ready_flag.wait(), timeout=10)
        await asyncio.wait_for(_logged_in(memo), timeout=10)
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
    return OperatorProcess(task=task, stop_flag=stop_flag, memo=memo)


async def _logged_in(memo: kopf.Memo) -> None:
    while getattr(memo, "agentrun", None) is None:
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_operator(
    apiserver: EmulatedApiServer, settings: OperatorSettings = FAST, clock: ShiftableClock | None = None
) -> AsyncIterator[OperatorProcess]:
    process = await start_operator(apiserver, settings, clock)
    try:
        yield process
    finally:
        if not process.task.done():
            await process.stop()


class Cluster:
    """The tests' hands on the emulated cluster: what kubectl, the kubelet and the Job controller would do."""

    def __init__(self, apiserver: EmulatedApiServer) -> None:
        self.apiserver = apiserver
        self.store = apiserver.store

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.store.try_get(kind, NAMESPACE, name)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.store.create(self.store.resource(obj["kind"]), NAMESPACE, obj)

    def patch(self, kind: str, name: str, patch: dict[str, Any], *, status: bool = False) -> dict[str, Any]:
        rt = self.store.resource(kind)
        return self.store.patch(rt, NAMESPACE, name, MERGE, patch, subresource="status" if status else None)

    def delete(self, kind: str, name: str) -> None:
        self.store.delete(self.store.resource(kind), NAMESPACE, name)

    def run(self, name: str = "q3") -> dict[str, Any]:
        run = self.get(constants.KIND, name)
        assert run is not None, f"AgentRun {name} is gone"
        return run

    def status(self, name: str = "q3") -> dict[str, Any]:
        status: dict[str, Any] = self.run(name).get("status") or {}
        return status

    def condition(self, kind: str, name: str = "q3") -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == kind), None)

    def events(self, run: str = "q3") -> list[dict[str, Any]]:
        """Events about the run, oldest first, as `kubectl describe` lists them."""
        return [
            e
            for e in self.store.all_of("Event", NAMESPACE)
            if e.get("involvedObject", {}).get("name") == run
            and e.get("involvedObject", {}).get("kind") == constants.KIND
        ]

    def event_reasons(self, run: str = "q3") -> list[str]:
        return [e.get("reason", "") for e in self.events(run)]

    def add_api_key_secret(self) -> None:
        self.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "openai"},
                "stringData": {"api-key": "sk-test-not-real"},
            }
        )

    def start_pod(self, run: str = "q3", *, suffix: str = "a") -> str:
        """What the Job controller and kubelet do: a pod of the current Job, running."""
        job = self.get("Job", f"{run}-runner")
        assert job is not None
        template = job["spec"]["template"]
        name = f"{run}-runner-{suffix}"
        self.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "labels": {
                        **template["metadata"]["labels"],
                        "batch.kubernetes.io/job-name": job["metadata"]["name"],
                    },
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": job["metadata"]["name"],
                            "uid": job["metadata"]["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": template["spec"],
            }
        )
        self.patch("Pod", name, {"status": {"phase": "Running", "startTime": now_iso()}}, status=True)
        self.patch("Job", f"{run}-runner", {"status": {"active": 1, "startTime": now_iso()}}, status=True)
        return name

    def fail_pod(self, name: str, run: str = "q3", *, exit_code: int = 1, failed: int = 1) -> None:
        self.patch(
            "Pod",
            name,
            {
                "status": {
                    "phase": "Failed",
                    "containerStatuses": [{"name": "runner", "state": {"terminated": {"exitCode": exit_code}}}],
                }
            },
            status=True,
        )
        self.patch("Job", f"{run}-runner", {"status": {"active": 0, "failed": failed}}, status=True)

    def report(self, run: str = "q3", *, iteration: int, pod: str = "q3-runner-a", **fields: Any) -> None:
        """What the runner does: replace its progress report (update of its own ConfigMap)."""
        run_obj = self.run(run)
        document = {
            "runUid": run_obj["metadata"]["uid"],
            "pod": pod,
            "iteration": iteration,
            "reportedAt": datetime.now(UTC).isoformat(),
            **fields,
        }
        self.patch("ConfigMap", contract.progress_name(run), {"data": {contract.PROGRESS_KEY: json.dumps(document)}})


async def eventually(check: Callable[[], T], *, timeout: float = 10.0, message: str = "") -> T:
    """Poll until check() returns a truthy value (and return it), or fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (AssertionError, KeyError, TypeError):
            last = None
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {message or check}; last value: {last!r}")


@dataclasses.dataclass(frozen=True)
class RunPace:
    """How a simulated runner reports: iterations, seconds between reports."""

    iterations: int = 50
    report_every_seconds: float = 0.05


async def simulate_run_life(apiserver: EmulatedApiServer, cluster: Cluster, pace: RunPace) -> None:
    """One run's whole life as the operator sees it: created, pod started, `pace.iterations` progress
    reports (each with a checkpoint), the outcome, then deletion of the run."""
    cluster.create(run_manifest(maxIterations=pace.iterations))
    await eventually(lambda: cluster.get("Job", "q3-runner"), message="the Job")
    pod = cluster.start_pod()
    await eventually(lambda: cluster.status().get("phase") == "Running", message="Running")
    for iteration in range(1, pace.iterations + 1):
        cluster.report(
            iteration=iteration,
            pod=pod,
            usage={"promptTokens": 100 * iteration, "completionTokens": 20 * iteration, "totalTokens": 120 * iteration},
            lastCheckpoint={"iteration": iteration, "time": now_iso(), "bytes": 1024},
        )
        await asyncio.sleep(pace.report_every_seconds)
    cluster.report(iteration=pace.iterations, pod=pod, outcome="Succeeded")
    await eventually(lambda: cluster.status().get("phase") == "Succeeded", message="Succeeded")
    await eventually(lambda: cluster.status().get("iteration") == pace.iterations, message="the last iteration")
    await asyncio.sleep(0.5)  # let the last Events go out
    cluster.delete(constants.KIND, "q3")
    await eventually(lambda: cluster.get(constants.KIND, "q3") is None, message="the run deleted")
