"""Run the real kopf operator in-process against the real test control plane, and play the node under it.

The operator logs in with its own ServiceAccount's token and exactly the chart's RBAC
(tests.harness.identities) and watches one namespace of the session's testbed. That namespace's pods
are never scheduled (``create_namespace(schedulable=False)``): the real Job controller creates a Job's
pods, counts their failures, applies the pod failure policy and writes the Job's conditions, while the
test plays only the kubelet (pod status, through ``Cluster.start_pod``/``fail_pod``/``play_kubelet``)
and the runner (its progress report). The Job's status is never written by a test.
"""

import asyncio
import contextlib
import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import httpx
import kopf
import yaml
from kopf._cogs.structs.credentials import Vault  # the type of kopf.operator's own ``vault`` argument

import agentrun_operator.handlers  # noqa: F401 - registers the handlers with kopf's default registry
from agentrun_api import constants, contract
from agentrun_operator.permits.settings import PermitSettings
from agentrun_operator.settings import OperatorSettings
from tests.harness.apiproxy import ApiProxy
from tests.harness.controlplane import write_kubeconfig
from tests.harness.identities import GATEWAY_SERVICE_ACCOUNT, SYSTEM_NAMESPACE, operator_identity
from tests.harness.testbed import KubeTestbed

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
    gateway_service_account=GATEWAY_SERVICE_ACCOUNT,
    permits=PermitSettings(host="127.0.0.1", port=0, lease_seconds=1.0, status_interval_seconds=0.5),
)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def running_pod_status(pod: dict[str, Any]) -> dict[str, Any]:
    """What the kubelet writes once a pod's containers run: phase Running, Ready, each container started."""
    started = now_iso()
    containers = [
        {
            "name": container["name"],
            "image": container["image"],
            "imageID": "",
            "ready": True,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": started}},
        }
        for container in pod["spec"]["containers"]
    ]
    return {
        "phase": "Running",
        "startTime": started,
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": started}],
        "containerStatuses": containers,
    }


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
    vault: Vault

    async def stop(self) -> None:
        self.stop_flag.set()
        await asyncio.wait_for(self.task, timeout=15)

    async def kill(self) -> None:
        """Stop abruptly, as a killed pod would: no cleanup handler runs, so the Lease is not released and no
        status is written on the way out. What the process's exit would end ends too, silently: the operator's
        own tasks (its supervisors would otherwise go on beside the next operator), servers and connections."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
        memo = self.memo
        for name in ("election", "mcp_listing"):
            task: asyncio.Task[None] | None = getattr(memo, name, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if "runs" in memo:
            await memo.runs.follow()  # what losing the Lease does: every supervisor stops, writing nothing more
        closers = [self.vault.close()]
        if "pool_status_writer" in memo:
            closers.append(memo.pool_status_writer.close())
        if "permit_server" in memo:
            closers.append(memo.permit_server.close())
        if "metrics_server" in memo:
            closers.append(memo.metrics_server.cleanup())
        if "agentrun" in memo:
            closers += [memo.agentrun.kube.close(), memo.agentrun.http.close()]
        for closing in closers:
            with contextlib.suppress(Exception):
                await closing


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
    cluster: "Cluster", settings: OperatorSettings = FAST, clock: ShiftableClock | None = None
) -> OperatorProcess:
    """The operator, as its Deployment runs it with AGENTRUN_WATCH_NAMESPACE: one namespace, its own token."""
    settings = dataclasses.replace(settings, watch_namespace=cluster.namespace)
    stop_flag, ready_flag = asyncio.Event(), asyncio.Event()
    memo = kopf.Memo(operator_settings=settings, clock=clock)
    # The operator logs in from KUBECONFIG at start-up (as in a pod it would from its service account);
    # the variable is restored once it has, so no later test talks with this test's credentials.
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cluster.operator_kubeconfig)
    vault = Vault()
    try:
        task = asyncio.create_task(
            kopf.operator(
                registry=kopf.get_default_registry(),
                clusterwide=False,
                namespaces=[cluster.namespace],
                standalone=True,
                memo=memo,
                vault=vault,
                stop_flag=stop_flag,
                ready_flag=ready_flag,
            )
        )
        await asyncio.wait_for(ready_flag.wait(), timeout=20)
        await asyncio.wait_for(_logged_in(memo), timeout=20)
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
    return OperatorProcess(task=task, stop_flag=stop_flag, memo=memo, vault=vault)


async def _logged_in(memo: kopf.Memo) -> None:
    while getattr(memo, "agentrun", None) is None:
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_operator(
    cluster: "Cluster", settings: OperatorSettings = FAST, clock: ShiftableClock | None = None
) -> AsyncIterator[OperatorProcess]:
    process = await start_operator(cluster, settings, clock)
    try:
        yield process
    finally:
        if not process.task.done():
            await process.stop()


# Where each kind the tests touch lives in the API: (group version path, plural).
RESOURCES: dict[str, tuple[str, str]] = {
    constants.KIND: (f"/apis/{constants.API_VERSION}", "agentruns"),
    "ThrottlePool": (f"/apis/{constants.API_VERSION}", "throttlepools"),
    "Job": ("/apis/batch/v1", "jobs"),
    "Pod": ("/api/v1", "pods"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Secret": ("/api/v1", "secrets"),
    "Service": ("/api/v1", "services"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Event": ("/api/v1", "events"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
    "Ingress": ("/apis/networking.k8s.io/v1", "ingresses"),
    "HTTPRoute": ("/apis/gateway.networking.k8s.io/v1", "httproutes"),
}
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
TERMINAL = ("Succeeded", "Failed")


class Cluster:
    """The tests' hands on one namespace of the real control plane: what kubectl, the kubelet and the runner
    would do, as a cluster admin. The Job controller, garbage collector and scheduler are the real ones;
    no method here writes a Job's status."""

    def __init__(
        self, testbed: KubeTestbed, namespace: str, operator_kubeconfig: Path, operator_token: str = ""
    ) -> None:
        self.testbed = testbed
        self.namespace = namespace
        # Where the operator logs in from: the API server, or the API proxy in front of it (``through``).
        self.operator_kubeconfig = operator_kubeconfig
        self.operator_token = operator_token
        self.admin: httpx.Client = testbed.admin
        self._played: set[str] = set()  # pods this kubelet has started (by uid)

    @classmethod
    def create_for(cls, testbed: KubeTestbed, prefix: str, state_dir: Path) -> "Cluster":
        """A fresh namespace whose pods no node runs, and the operator's ServiceAccount granted in it."""
        namespace = testbed.create_namespace(prefix, schedulable=False)
        identity = operator_identity(testbed.control_plane)
        identity.grant(namespace)
        token = identity.token()
        kubeconfig = write_kubeconfig(
            state_dir / "operator.kubeconfig",
            testbed.control_plane.url,
            testbed.control_plane.ca_file,
            user=f"system:serviceaccount:{SYSTEM_NAMESPACE}:{identity.account}",
            token=token,
            namespace=namespace,
        )
        return cls(testbed, namespace, kubeconfig, token)

    def through(self, proxy: ApiProxy, state_dir: Path) -> None:
        """From now on the operator reaches the API server through `proxy` (its request log and faults),
        with the same ServiceAccount token."""
        self.operator_kubeconfig = proxy.write_kubeconfig(
            state_dir / "operator-proxied.kubeconfig", self.operator_token, namespace=self.namespace
        )

    def admin_kubeconfig(self, path: Path) -> Path:
        """A cluster admin's kubeconfig whose context names this namespace (for kubectl)."""
        control_plane = self.testbed.control_plane
        return control_plane.admin_kubeconfig_for(path, self.namespace)

    def operator_connection(self) -> kopf.ConnectionInfo:
        """The operator's credentials (its ServiceAccount token), for the operator's own KubeClient."""
        config = yaml.safe_load(self.operator_kubeconfig.read_text())
        server = config["clusters"][0]["cluster"]
        return kopf.ConnectionInfo(
            server=server["server"],
            ca_path=server.get("certificate-authority"),
            token=config["users"][0]["user"]["token"],
            default_namespace=self.namespace,
        )

    # -- REST -----------------------------------------------------------------------------------------

    def path(self, kind: str, name: str = "", *, subresource: str = "") -> str:
        prefix, plural = RESOURCES[kind]
        path = f"{prefix}/namespaces/{self.namespace}/{plural}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        answer = self.admin.get(self.path(kind, name))
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        obj: dict[str, Any] = answer.json()
        return obj

    def items(self, kind: str, *, labels: str = "", fields: str = "") -> list[dict[str, Any]]:
        params = {key: value for key, value in (("labelSelector", labels), ("fieldSelector", fields)) if value}
        answer = self.admin.get(self.path(kind), params=params)
        answer.raise_for_status()
        items: list[dict[str, Any]] = answer.json()["items"]
        return items

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        answer = self.admin.post(self.path(obj["kind"]), json=obj)
        if answer.is_error:
            raise AssertionError(f"create {obj['kind']}: {answer.status_code} {answer.text}")
        created: dict[str, Any] = answer.json()
        return created

    def patch(self, kind: str, name: str, patch: dict[str, Any], *, status: bool = False) -> dict[str, Any]:
        answer = self.admin.patch(
            self.path(kind, name, subresource="status" if status else ""),
            json=patch,
            headers={"Content-Type": MERGE},
        )
        if answer.is_error:
            raise AssertionError(f"patch {kind}/{name}: {answer.status_code} {answer.text}")
        patched: dict[str, Any] = answer.json()
        return patched

    def delete(self, kind: str, name: str) -> None:
        """Delete as kubectl does: dependents go in the background (the garbage collector's work)."""
        answer = self.admin.request("DELETE", self.path(kind, name), json={"propagationPolicy": "Background"})
        if answer.status_code != 404:
            answer.raise_for_status()

    # -- reading a run --------------------------------------------------------------------------------

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
        events = self.items("Event", fields=f"involvedObject.kind={constants.KIND},involvedObject.name={run}")
        return sorted(
            events, key=lambda e: (e.get("firstTimestamp") or e.get("eventTime") or "", e["metadata"]["name"])
        )

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

    # -- the kubelet ----------------------------------------------------------------------------------

    def pods(self, run: str = "q3") -> list[dict[str, Any]]:
        """The pods the Job controller made for the run's current Job, oldest first."""
        job = self.get("Job", f"{run}-runner")
        if job is None:
            return []
        pods = self.items("Pod", labels=f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}")
        return sorted(pods, key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))

    async def start_pod(self, run: str = "q3", *, timeout: float = 60.0) -> str:
        """What the kubelet does with a pod the Job controller created: start it. Waits for the real Job
        controller's next pod of the run's current Job (after a failure it backs off before making one)."""

        def next_pod() -> dict[str, Any] | None:
            return next(
                (
                    p
                    for p in self.pods(run)
                    if p["metadata"]["uid"] not in self._played
                    and not p["metadata"].get("deletionTimestamp")
                    and (p.get("status") or {}).get("phase") == "Pending"
                ),
                None,
            )

        pod = await eventually(next_pod, timeout=timeout, message=f"the Job controller's next pod of {run}")
        name: str = pod["metadata"]["name"]
        self._played.add(pod["metadata"]["uid"])
        self.patch("Pod", name, {"status": running_pod_status(pod)}, status=True)
        return name

    def fail_pod(self, name: str, *, exit_code: int = 1, reason: str = "Error") -> None:
        """What the kubelet writes when the runner container exits with `exit_code`."""
        pod = self.get("Pod", name)
        assert pod is not None, f"pod {name} is gone"
        self._played.add(pod["metadata"]["uid"])
        finished = now_iso()
        containers = [
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": reason,
                        "startedAt": (pod.get("status") or {}).get("startTime") or finished,
                        "finishedAt": finished,
                    }
                },
            }
            for container in pod["spec"]["containers"]
        ]
        self.patch(
            "Pod",
            name,
            {
                "status": {
                    "phase": "Failed",
                    "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": finished}],
                    "containerStatuses": containers,
                }
            },
            status=True,
        )

    def play_kubelet(self) -> list[str]:
        """What the kubelet does with pods being deleted: stops their runner (SIGTERM, exit 143) and reports
        them Failed, so the Job controller can count and replace them. Returns the pods it stopped."""
        stopped = []
        for pod in self.items("Pod"):
            if pod["metadata"]["uid"] not in self._played:
                continue  # never started here: no kubelet has it (the pod garbage collector's, unscheduled)
            if pod["metadata"].get("deletionTimestamp") and (pod.get("status") or {}).get("phase") not in TERMINAL:
                self.fail_pod(pod["metadata"]["name"], exit_code=143)
                stopped.append(pod["metadata"]["name"])
        return stopped

    def pod_gone(self, name: str) -> bool:
        """Playing the kubelet meanwhile (a pod being deleted is stopped and reported), is the pod gone?"""
        self.play_kubelet()
        return self.get("Pod", name) is None

    # -- the runner -----------------------------------------------------------------------------------

    def report(self, run: str = "q3", *, iteration: int, pod: str = "", **fields: Any) -> None:
        """What the runner does: replace its progress report (update of its own ConfigMap)."""
        run_obj = self.run(run)
        document = {
            "runUid": run_obj["metadata"]["uid"],
            "pod": pod or (self.pods(run)[-1]["metadata"]["name"] if self.pods(run) else f"{run}-runner"),
            "iteration": iteration,
            "reportedAt": datetime.now(UTC).isoformat(),
            **fields,
        }
        self.patch("ConfigMap", contract.progress_name(run), {"data": {contract.PROGRESS_KEY: json.dumps(document)}})


async def eventually(check: Callable[[], T | Literal[False] | None], *, timeout: float = 10.0, message: str = "") -> T:
    """Poll until check() returns a truthy value (and return it), or fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (AssertionError, KeyError, TypeError):
            last = None
        if last:
            return cast(T, last)
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {message or check}; last value: {last!r}")


@dataclasses.dataclass(frozen=True)
class RunPace:
    """How a simulated runner reports: iterations, seconds between reports."""

    iterations: int = 50
    report_every_seconds: float = 0.05


async def simulate_run_life(cluster: Cluster, pace: RunPace) -> None:
    """One run's whole life as the operator sees it: created, pod started, `pace.iterations` progress
    reports (each with a checkpoint), the outcome, then deletion of the run."""
    cluster.create(run_manifest(maxIterations=pace.iterations))
    await eventually(lambda: cluster.get("Job", "q3-runner"), message="the Job")
    pod = await cluster.start_pod()
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
