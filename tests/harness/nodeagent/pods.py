"""Kubelet for one pod: start its containers as local processes and report the pod's status.

Each container runs under ``unshare --mount --propagation private`` and the launcher script, which
bind-mounts the pod's volumes at their mountPaths and then execs the container's command, so the
process sees the files a real container would see, at the same paths.
"""

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness.nodeagent.containers import (
    ContainerCommandError,
    ContainerConfigError,
    ContainerLaunch,
    ImagePullError,
    PodEnvironment,
    VolumeSetupError,
    check_image,
    container_argv,
    container_env,
    container_mounts,
    prepare_volumes,
)
from tests.harness.nodeagent.kube import (
    STRATEGIC_MERGE_PATCH,
    ApiError,
    JsonObject,
    KubeClient,
    namespaced_path,
)
from tests.harness.nodeagent.settings import NodeSettings

logger = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("launcher.py")
UNSHARE = ["unshare", "--mount", "--propagation", "private", "--"]
LOCAL_IP = "127.0.0.1"  # the node's address (status.hostIP)
# Every pod gets an address of its own, as a pod network gives it: 127.0.0.0/8 is loopback as a whole on
# Linux, so two runners both serving containerPort 8080 on their podIP do not collide. Numbering starts at a
# random place, so node agents of two processes side by side (a demo next to a test run) rarely meet.
_pod_addresses = itertools.count(random.randrange(250 * 250))


def next_pod_ip() -> str:
    n = next(_pod_addresses)
    return f"127.2.{(n // 250) % 250}.{n % 250 + 1}"


STATUS_WRITE_ATTEMPTS = 20  # about 15 s of retries at most


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def exit_code_of(returncode: int) -> int:
    """A process killed by signal N exits 128+N in a container (SIGKILL: 137, SIGTERM: 143)."""
    return returncode if returncode >= 0 else 128 - returncode


def condition(type_: str, status: bool, reason: str = "", message: str = "") -> JsonObject:
    entry: JsonObject = {"type": type_, "status": "True" if status else "False", "lastTransitionTime": now_rfc3339()}
    if reason:
        entry["reason"] = reason
    if message:
        entry["message"] = message
    return entry


class MountNamespaceUnavailableError(RuntimeError):
    """This machine does not let the node agent give pods their own mount namespace (not root?)."""


def check_mount_namespaces() -> None:
    """Prove that `unshare --mount` and bind mounts work here, or say clearly why not."""
    try:
        result = subprocess.run(
            [*UNSHARE, sys.executable, str(LAUNCHER), "--check"], capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError as error:
        raise MountNamespaceUnavailableError(
            "the node agent needs `unshare` (util-linux) to give each pod its own mounts"
        ) from error
    if result.returncode != 0:
        raise MountNamespaceUnavailableError(
            "the node agent cannot create a private mount namespace with bind mounts "
            f"(it needs root or CAP_SYS_ADMIN): {result.stderr.strip()[-300:]}"
        )


class PodRuntime:
    """One pod's processes and status, from Pending to Succeeded or Failed."""

    def __init__(
        self,
        *,
        kube: KubeClient,
        pod: JsonObject,
        state_dir: Path,
        settings: NodeSettings,
        notify: Callable[[], None],
    ) -> None:
        self.namespace: str = pod["metadata"]["namespace"]
        self.name: str = pod["metadata"]["name"]
        self._pod = pod
        self._spec: JsonObject = pod.get("spec") or {}
        self._kube = kube
        self._settings = settings
        self._notify = notify
        self.pod_dir = state_dir / "pods" / self.namespace / self.name
        self.log_dir = state_dir / "logs" / self.namespace / self.name
        self._path = namespaced_path("v1", "pods", self.namespace, self.name)
        # PodScheduled is the scheduler's; the node writes the conditions a kubelet owns.
        self._conditions: dict[str, JsonObject] = {}
        self._container_statuses: list[JsonObject] = []
        self._init_statuses: list[JsonObject] = []
        self._start_time = now_rfc3339()
        self._stop = asyncio.Event()
        self._grace_seconds: float | None = None
        self.stop_reason: str | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.exit_code: int | None = None  # the main container's last exit code
        self.restart_count = 0
        self.phase = "Pending"
        self.pod_ip = next_pod_ip()
        self.finished = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- control -------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pod {self.namespace}/{self.name}")

    def terminate(self, grace_seconds: float, reason: str) -> None:
        """Stop the pod: SIGTERM to the container, SIGKILL after the grace period (as kubelet does)."""
        if self._grace_seconds is None or grace_seconds < self._grace_seconds:
            self._grace_seconds = grace_seconds
        self.stop_reason = self.stop_reason or reason
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def default_grace_seconds(self) -> float:
        return float(self._spec.get("terminationGracePeriodSeconds", 30))

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal the running container: SIGKILL hits its whole process group, as a container's end does."""
        if self.process is None or self.process.returncode is not None:
            raise ProcessLookupError(f"pod {self.namespace}/{self.name} has no running process")
        if sig == signal.SIGKILL:
            self._kill_group()
        else:
            self.process.send_signal(sig)

    async def add_condition(self, type_: str, reason: str, message: str) -> None:
        self._conditions[type_] = condition(type_, True, reason, message)
        await self._write_status()

    async def kill_now(self) -> None:
        """Executor shutdown: no grace."""
        self.terminate(0, "ExecutorShutdown")
        self._kill_group()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), self._settings.kill_timeout_seconds + 1)

    # -- status --------------------------------------------------------------------------------

    def _status(self) -> JsonObject:
        status: JsonObject = {
            "phase": self.phase,
            "conditions": list(self._conditions.values()),
            "hostIP": LOCAL_IP,
            "startTime": self._start_time,
            "containerStatuses": self._container_statuses,
        }  # no qosClass: the API server sets it from the pod's resources at creation, and it never changes
        if self._init_statuses:
            status["initContainerStatuses"] = self._init_statuses
        if self.phase == "Running":
            status["podIP"] = self.pod_ip
            status["podIPs"] = [{"ip": self.pod_ip}]
        return status

    async def _write_status(self) -> None:
        """Write the whole status, retrying API errors as kubelet's status manager does (each write
        carries the full state, so a retry is safe); a pod that is gone needs no status."""
        delay = 0.05
        for _attempt in range(STATUS_WRITE_ATTEMPTS):
            try:
                # A strategic merge, as the kubelet's status manager writes: conditions merge by type, so those the
                # node does not own (DisruptionTarget from an eviction, PodScheduled) stay as others wrote them.
                await self._kube.merge_patch(
                    self._path + "/status", {"status": self._status()}, content_type=STRATEGIC_MERGE_PATCH
                )
                break
            except (ApiError, aiohttp.ClientError, TimeoutError) as error:
                logger.warning("pod %s/%s: status write failed, retrying: %s", self.namespace, self.name, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        else:
            logger.error(
                "pod %s/%s: status not written after %d attempts", self.namespace, self.name, STATUS_WRITE_ATTEMPTS
            )
        self._notify()

    def _set_ready(self, ready: bool, reason: str = "") -> None:
        for type_ in ("ContainersReady", "Ready"):
            self._conditions[type_] = condition(type_, ready, reason)

    def _main_status(self, state: JsonObject, *, ready: bool = False) -> list[JsonObject]:
        container = self._spec["containers"][0]
        return [
            {
                "name": container["name"],
                "image": container.get("image", ""),
                "imageID": "",
                "state": state,
                "ready": ready,
                "started": "running" in state,
                "restartCount": self.restart_count,
            }
        ]

    # -- lifecycle -----------------------------------------------------------------------------

    async def _prepare(self) -> tuple[list[ContainerLaunch], ContainerLaunch]:
        pod = self._pod
        # kubelet knows the pod's IP before it starts containers: the downward API can hand it in.
        pod.setdefault("status", {})["podIP"] = self.pod_ip
        api = self._settings.in_cluster_api
        containers = [*(self._spec.get("initContainers") or []), self._spec["containers"][0]]
        for container in containers:
            check_image(container, self._settings.image_commands)
        source = PodEnvironment(self._kube, pod)
        volumes = await prepare_volumes(pod, source, self._kube, self.pod_dir)
        launches: list[ContainerLaunch] = []
        for container in containers:
            env = dict(self._settings.base_env)
            env.update(
                {"HOSTNAME": self.name, "KUBERNETES_SERVICE_HOST": api.host, "KUBERNETES_SERVICE_PORT": str(api.port)}
            )
            env.update(await container_env(container, source))
            launches.append(
                ContainerLaunch(
                    name=container["name"],
                    argv=container_argv(container, env, self._settings.image_commands),
                    env=env,
                    working_dir=container.get("workingDir"),
                    mounts=container_mounts(container, volumes),
                )
            )
        return launches[:-1], launches[-1]

    async def _wait_for_config(self) -> tuple[list[ContainerLaunch], ContainerLaunch] | None:
        """Retry until every reference resolves; None when the pod is stopped first."""
        pull_attempts = 0
        while not self._stop.is_set():
            try:
                return await self._prepare()
            except ImagePullError as error:
                pull_attempts += 1
                waiting = {
                    "reason": "ErrImagePull" if pull_attempts == 1 else "ImagePullBackOff",
                    "message": str(error),
                }
            except ContainerConfigError as error:
                waiting = {"reason": "CreateContainerConfigError", "message": str(error)}
            except ContainerCommandError as error:
                waiting = {"reason": "CreateContainerError", "message": str(error)}
            except VolumeSetupError as error:
                waiting = {"reason": "ContainerCreating", "message": str(error)}
            self._container_statuses = self._main_status({"waiting": waiting})
            await self._write_status()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._settings.config_retry_seconds)
        return None

    async def _run(self) -> None:
        try:
            await self._run_pod()
        except Exception:
            logger.exception("pod %s/%s: the node agent failed to run it", self.namespace, self.name)
            self.phase = "Failed"
            await self._write_status()
        finally:
            self.finished.set()
            self._notify()

    async def _run_pod(self) -> None:
        self._container_statuses = self._main_status({"waiting": {"reason": "ContainerCreating"}})
        self._set_ready(False, "ContainersNotReady")
        await self._write_status()
        prepared = await self._wait_for_config()
        if prepared is None:
            self.phase = "Failed"
            await self._finish()
            return
        init_launches, main_launch = prepared
        for index, launch in enumerate(init_launches):
            self._init_statuses.append(self._container_record(launch, {"running": {"startedAt": now_rfc3339()}}))
            await self._write_status()
            code, state = await self._run_container(launch)
            self._init_statuses[index] = self._container_record(launch, state)
            if code != 0 or self._stop.is_set():
                self.phase = "Failed"
                await self._finish()
                return
        self._conditions["Initialized"] = condition("Initialized", True)
        restart_policy = self._spec.get("restartPolicy", "Always")
        while True:
            code, state = await self._run_container(main_launch, main=True)
            self.exit_code = code
            self._container_statuses = self._main_status(state)
            if code == 0 or self._stop.is_set() or restart_policy == "Never":
                break
            # OnFailure: kubelet restarts the container in place; the Job counts restarts as failures.
            self.restart_count += 1
            self._container_statuses = self._main_status(
                {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off restarting failed container (exit {code})",
                    }
                }
            )
            self._container_statuses[0]["lastState"] = state
            await self._write_status()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._settings.container_restart_backoff_seconds)
            if self._stop.is_set():
                break
        self.phase = "Succeeded" if code == 0 else "Failed"
        await self._finish()

    async def _finish(self) -> None:
        self._set_ready(False, "PodCompleted")
        await self._write_status()

    def _container_record(self, launch: ContainerLaunch, state: JsonObject) -> JsonObject:
        return {"name": launch.name, "state": state, "ready": False, "restartCount": 0, "image": "", "imageID": ""}

    async def _run_container(self, launch: ContainerLaunch, *, main: bool = False) -> tuple[int, JsonObject]:
        """Run one container to its end; returns its exit code and terminated state."""
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        spec_file = self.pod_dir / f"{launch.name}.launch.json"
        spec_file.write_text(
            json.dumps(
                {
                    "mounts": [
                        {"source": str(m.source), "target": m.target, "readOnly": m.read_only} for m in launch.mounts
                    ],
                    "sharedPaths": list(self._settings.shared_host_paths),
                    "workingDir": launch.working_dir,
                    "argv": launch.argv,
                    "env": launch.env,
                }
            )
        )
        started_at = now_rfc3339()
        with (self.log_dir / f"{launch.name}.log").open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *UNSHARE,
                sys.executable,
                str(LAUNCHER),
                str(spec_file),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: SIGKILL takes every process it started
                cwd=self.pod_dir,
                env=launch.env,
            )
        container_id = f"local://{self.process.pid}"
        if main:
            self.phase = "Running"
            self._set_ready(True)
            self._container_statuses = self._main_status({"running": {"startedAt": started_at}}, ready=True)
            self._container_statuses[0]["containerID"] = container_id
            await self._write_status()
        returncode = await self._wait_or_stop(self.process)
        self._kill_group()  # whatever the container left behind ends with it
        code = exit_code_of(returncode)
        terminated: JsonObject = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started_at,
            "finishedAt": now_rfc3339(),
            "containerID": container_id,
        }
        if returncode < 0:
            terminated["signal"] = -returncode
        if main:
            self._set_ready(False, "PodCompleted")
        return code, {"terminated": terminated}

    async def _wait_or_stop(self, process: asyncio.subprocess.Process) -> int:
        exited = asyncio.create_task(process.wait())
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not exited.done():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), self._grace_seconds or 0)
            except TimeoutError:
                self._kill_group()
                await asyncio.wait_for(exited, self._settings.kill_timeout_seconds)
        return exited.result()

    def _kill_group(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    @property
    def pod(self) -> dict[str, Any]:
        return self._pod
