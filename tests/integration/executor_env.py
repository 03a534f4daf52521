"""A running local Job executor against an API server over HTTP, with helpers for executor tests."""

import asyncio
import base64
import contextlib
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kmock import KubernetesEmulator, ResourceInfo, Server

from tests.harness.apiserver import EmulatedApiServer
from tests.harness.executor import ExecutorSettings, LocalJobExecutor, MountNamespaceUnavailableError
from tests.harness.executor.jobs import JOB_NAME_LABEL
from tests.harness.nodeagent.kube import JsonObject, KubeClient, namespaced_path

NAMESPACE = "default"
RESOURCES = {
    "v1/pods": "Pod",
    "v1/secrets": "Secret",
    "v1/configmaps": "ConfigMap",
    "v1/persistentvolumeclaims": "PersistentVolumeClaim",
    "batch/v1/jobs": "Job",
}
T = TypeVar("T")


def write_kubeconfig(path: Path, server_url: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server_url}}],
        "users": [{"name": "local", "user": {}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "local", "namespace": NAMESPACE}}],
        "current-context": "local",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.asynccontextmanager
async def api_server(tmp_path: Path, backend: str) -> AsyncIterator[Path]:
    """An API server over real HTTP on 127.0.0.1; yields its kubeconfig path.

    "emulator" is the project's emulated kube-apiserver; "kmock" is kmock's naive object store (no
    uids, selectors or status subresource), which shows the executor needs nothing beyond plain REST.
    """
    if backend == "emulator":
        async with EmulatedApiServer() as apiserver:
            yield apiserver.kubeconfig_path
        assert not apiserver.handler.internal_errors, apiserver.handler.internal_errors
        return
    async with KubernetesEmulator() as emulator, Server(emulator) as server:
        for resource, kind in RESOURCES.items():
            emulator.resources[resource] = ResourceInfo(namespaced=True, kind=kind)
        yield write_kubeconfig(tmp_path / "kubeconfig", str(server.url).rstrip("/"))


@dataclass
class ExecutorEnv:
    kube: KubeClient
    executor: LocalJobExecutor
    namespace: str = NAMESPACE

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
            "v1", "persistentvolumeclaims", name, {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "spec": {}}
        )

    async def job(
        self, name: str, script: str, *, pod: JsonObject | None = None, container: JsonObject | None = None, **spec: Any
    ) -> JsonObject:
        """A Job running `python -c script` (restartPolicy Never, backoffLimit 0 unless given)."""
        main = {
            "name": "main",
            "image": "python:3",
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

    async def job_condition(self, name: str, type_: str, timeout: float = 10.0) -> JsonObject:
        async def probe() -> JsonObject | None:
            for entry in ((await self.get_job(name)).get("status") or {}).get("conditions") or []:
                if entry["type"] == type_ and entry["status"] == "True":
                    return dict(entry)
            return None

        return await self.eventually(probe, f"job {name} condition {type_}", timeout)

    async def running_pod(self, job: str, *, says: str = "started", timeout: float = 10.0) -> str:
        """The name of a Running pod of the job whose output contains `says` (its script got going)."""

        async def probe() -> str | None:
            for pod in await self.pods(job):
                name = str(pod["metadata"]["name"])
                if (pod.get("status") or {}).get("phase") == "Running" and says in self.executor.read_log(
                    self.namespace, name
                ):
                    return name
            return None

        return await self.eventually(probe, f"a running pod of job {job} that printed {says!r}", timeout)


@contextlib.asynccontextmanager
async def executor_on(
    kubeconfig: Path, tmp_path: Path, settings: ExecutorSettings | None = None, *, namespace: str | None = NAMESPACE
) -> AsyncIterator[ExecutorEnv]:
    """A running executor against the API server of kubeconfig (watching one namespace, or all when None);
    skips the test where mounts are not permitted."""
    try:
        executor = LocalJobExecutor(kubeconfig, namespace, state_dir=tmp_path / "state", settings=settings)
        await executor.__aenter__()
    except MountNamespaceUnavailableError as error:
        pytest.skip(str(error))
    try:
        async with KubeClient(str(kubeconfig)) as kube:
            yield ExecutorEnv(kube, executor)
    finally:
        await executor.__aexit__(*sys.exc_info())


@contextlib.asynccontextmanager
async def executor_env(
    tmp_path: Path, *, backend: str = "emulator", settings: ExecutorSettings | None = None
) -> AsyncIterator[ExecutorEnv]:
    async with api_server(tmp_path, backend) as kubeconfig, executor_on(kubeconfig, tmp_path, settings) as env:
        yield env
        errors = env.executor.reconcile_errors
    assert not errors, errors
