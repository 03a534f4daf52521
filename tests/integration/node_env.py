"""A namespace of the test control plane with its node agent, and helpers for the node agent's tests: Jobs whose
pods the real Job controller creates, the real scheduler binds and the node agent runs as local processes."""

import asyncio
import base64
import contextlib
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.harness.nodeagent.kube import JsonObject, KubeClient, namespaced_path
from tests.harness.nodeagent.threaded import JOB_NAME_LABEL, NodeAgentThread
from tests.harness.testbed import KubeTestbed

# An image the node has (the project's runner image); the tests give every container its own command.
IMAGE = "agentrun-runner"
T = TypeVar("T")


@dataclass
class NodeEnv:
    kube: KubeClient
    node: NodeAgentThread
    namespace: str
    kubeconfig: Path

    def path(self, api: str, plural: str, name: str | None = None) -> str:
        return namespaced_path(api, plural, self.namespace, name)

    async def create(self, api: str, plural: str, name: str, body: JsonObject) -> JsonObject:
        body = {**body, "metadata": {"name": name, "namespace": self.namespace, **(body.get("metadata") or {})}}
        return await self.kube.create(self.path(api, plural), body)

    async def secret(self, name: str, data: dict[str, str]) -> None:
        encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
        await self.create("v1", "secrets", name, {"apiVersion": "v1", "kind": "Secret", "data": encoded})

    async def config_map(self, name: str, data: dict[str, str]) -> None:
        await self.create("v1", "configmaps", name, {"apiVersion": "v1", "kind": "ConfigMap", "data": data})

    async def claim(self, name: str) -> None:
        await self.create(
            "v1",
            "persistentvolumeclaims",
            name,
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
            },
        )

    async def job(
        self, name: str, script: str, *, pod: JsonObject | None = None, container: JsonObject | None = None, **spec: Any
    ) -> JsonObject:
        """A Job running `python -c script` (restartPolicy Never, backoffLimit 0 unless given)."""
        main = {
            "name": "main",
            "image": IMAGE,
            "command": ["python", "-c", textwrap.dedent(script)],
            **(container or {}),
        }
        job_spec = {
            "backoffLimit": 0,
            **spec,
            "template": {"spec": {"restartPolicy": "Never", "containers": [main], **(pod or {})}},
        }
        return await self.create("batch/v1", "jobs", name, {"apiVersion": "batch/v1", "kind": "Job", "spec": job_spec})

    async def get_job(self, name: str) -> JsonObject:
        job = await self.kube.get(self.path("batch/v1", "jobs", name))
        assert job is not None, f"job {name} is gone"
        return job

    async def pods(self, job: str) -> list[JsonObject]:
        pods = await self.kube.list(self.path("v1", "pods"))
        return [pod for pod in pods if (pod["metadata"].get("labels") or {}).get(JOB_NAME_LABEL) == job]

    async def eventually(self, probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 10.0) -> T:
        """Poll probe until it returns something truthy; fail naming what was awaited."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = await probe()
            if result:
                return result
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.05)

    async def job_condition(self, name: str, type_: str, timeout: float = 60.0) -> JsonObject:
        async def probe() -> JsonObject | None:
            for entry in ((await self.get_job(name)).get("status") or {}).get("conditions") or []:
                if entry["type"] == type_ and entry["status"] == "True":
                    return dict(entry)
            return None

        return await self.eventually(probe, f"job {name} condition {type_}", timeout)

    async def running_pod(self, job: str, *, says: str = "started", timeout: float = 30.0) -> str:
        """The name of a Running pod of the job whose output contains `says` (its script got going)."""

        async def probe() -> str | None:
            for pod in await self.pods(job):
                name = str(pod["metadata"]["name"])
                if (pod.get("status") or {}).get("phase") == "Running" and says in self.node.read_log(
                    self.namespace, name
                ):
                    return name
            return None

        return await self.eventually(probe, f"a running pod of job {job} that printed {says!r}", timeout)


@contextlib.asynccontextmanager
async def node_env(testbed: KubeTestbed, namespace: str, tmp_path: Path) -> AsyncIterator[NodeEnv]:
    """The node agent's view of one test namespace, with a cluster admin's client on it."""
    control_plane = testbed.control_plane
    kubeconfig = control_plane.admin_kubeconfig_for(tmp_path / "admin.kubeconfig", namespace)
    async with KubeClient(str(kubeconfig)) as kube:
        yield NodeEnv(kube, testbed.node, namespace, kubeconfig)
