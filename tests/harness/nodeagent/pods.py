"""Kubelet for one pod: start its containers as local processes and report the pod's status.

Each container runs under ``unshare --mount --propagation private`` and the launcher script, which
bind-mounts the pod's volumes at their mountPaths and then execs the container's command, so the
process sees the files a real container would see, at the same paths.
"""

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness.nodeagent.containers import (
    ContainerCommandError,
    ContainerConfigError,
    ContainerLaunch,
    ImagePullError,
    Mount,
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
from tests.harness.nodeagent.oci import container_args, refuse_root
from tests.harness.nodeagent.probes import ContainerProbes
from tests.harness.nodeagent.runc import RuncContainer, RuncRuntime
from tests.harness.nodeagent.settings import NodeSettings
from tests.harness.podnet.addresses import PodAddresses
from tests.harness.podnet.resolver import resolv_conf

logger = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("launcher.py")
UNSHARE = ["unshare", "--mount", "--propagation", "private", "--"]
LOCAL_IP = "127.0.0.1"  # the node's address (status.hostIP)
RESOLV_CONF = "/etc/resolv.conf"
HOSTS = "/etc/hosts"
EXIT_START_FAILED = 128  # the runtime could not start the container (kubelet's StartError)

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


class ProcessContainer:
    """A container run as a local process (the default runtime): signals go to the process, SIGKILL to its whole
    process group, as a container's end takes every process in it."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid
        self.uri = f"local://{process.pid}"  # containerStatuses' containerID

    def signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGKILL:
            self.kill()
        else:
            self.process.send_signal(sig)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    async def close(self) -> None:
        return None


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
        pod_addresses: PodAddresses,
        runc: RuncRuntime | None = None,
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
        self.container: ProcessContainer | RuncContainer | None = None  # the running one
        self._runc = runc
        self.exit_code: int | None = None  # the main container's last exit code
        self.restart_count = 0
        self.phase = "Pending"
        self._pod_addresses = pod_addresses
        self._host_network = bool(self._spec.get("hostNetwork"))
        # The pod's own address on the pod network, held from its sandbox's creation until its containers end.
        self.pod_ip = LOCAL_IP if self._host_network else ""
        self._probe_failure: str | None = None
        self._last_state: JsonObject = {}  # the main container's previous run, once it has restarted
        self._background: set[asyncio.Task[None]] = set()
        self._status_lock = asyncio.Lock()  # one write at a time, each with the state of its moment
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
        container = self.container
        if container is None or container.process.returncode is not None:
            raise ProcessLookupError(f"pod {self.namespace}/{self.name} has no running process")
        container.signal(sig)

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
        if self.pod_ip:
            status["podIP"] = self.pod_ip
            status["podIPs"] = [{"ip": self.pod_ip}]
        return status

    async def _write_status(self) -> None:
        """Write the whole status, retrying API errors as kubelet's status manager does (each write
        carries the full state, so a retry is safe); a pod that is gone needs no status."""
        async with self._status_lock:
            await self._write_status_now()
        self._notify()

    async def _write_status_now(self) -> None:
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

    def _set_ready(self, ready: bool, reason: str = "") -> None:
        for type_ in ("ContainersReady", "Ready"):
            self._conditions[type_] = condition(type_, ready, reason)

    def _main_status(self, state: JsonObject, *, ready: bool = False) -> list[JsonObject]:
        container = self._spec["containers"][0]
        status: JsonObject = {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "state": state,
            "ready": ready,
            "started": "running" in state,
            "restartCount": self.restart_count,
        }
        if self._last_state:
            status["lastState"] = self._last_state
        return [status]

    # -- lifecycle -----------------------------------------------------------------------------

    async def _prepare(self) -> tuple[list[ContainerLaunch], ContainerLaunch]:
        pod = self._pod
        # kubelet knows the pod's IP before it starts containers: the downward API can hand it in.
        pod.setdefault("status", {})["podIP"] = self.pod_ip
        api = self._settings.in_cluster_api
        containers = [*(self._spec.get("initContainers") or []), self._spec["containers"][0]]
        images = {}
        for container in containers:
            if self._runc is None:
                check_image(container, self._settings.image_commands)
            else:
                images[container["name"]] = await self._runc.resolve_image(str(container.get("image", "")))
                refuse_root(pod, container, images[container["name"]][1])
        source = PodEnvironment(self._kube, pod)
        volumes = await prepare_volumes(pod, source, self._kube, self.pod_dir)
        pod_mounts = self._dns_mounts() if self._runc is None else self._etc_mounts()
        launches: list[ContainerLaunch] = []
        for container in containers:
            local_image, image = images.get(container["name"], ("", None))
            env = image.env_map() if image else {}
            env.update(self._settings.base_env)
            env.update(
                {"HOSTNAME": self.name, "KUBERNETES_SERVICE_HOST": api.host, "KUBERNETES_SERVICE_PORT": str(api.port)}
            )
            env.update(await container_env(container, source))
            mounts = container_mounts(container, volumes, host_mount_points=image is None)
            launches.append(
                ContainerLaunch(
                    name=container["name"],
                    argv=(
                        container_argv(container, env, self._settings.image_commands)
                        if image is None
                        else container_args(container, image, env)
                    ),
                    env=env,
                    working_dir=container.get("workingDir"),
                    mounts=[*pod_mounts, *mounts],
                    local_image=local_image,
                    container=container,
                )
            )
        return launches[:-1], launches[-1]

    def _etc_mounts(self) -> list[Mount]:
        """A container's /etc/resolv.conf (kubelet's for ClusterFirst, else the node's) and /etc/hosts (localhost and
        the pod's own name at its IP), as kubelet mounts them into every container."""
        hosts = self.pod_dir / "hosts"
        hosts.parent.mkdir(parents=True, exist_ok=True)
        hosts.write_text(
            f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{self.pod_ip}\t{self.name}\n"
        )
        resolv = self._dns_mounts() or [Mount(Path(RESOLV_CONF), RESOLV_CONF, read_only=True)]
        return [*resolv, Mount(hosts, HOSTS, read_only=True)]

    def _dns_mounts(self) -> list[Mount]:
        """The pod's /etc/resolv.conf as kubelet writes it for dnsPolicy ClusterFirst: the cluster DNS first, with
        the search path that makes ``<service>`` and ``<service>.<namespace>`` resolve from the pod's namespace."""
        policy = self._spec.get("dnsPolicy") or "ClusterFirst"
        cluster_first = (policy == "ClusterFirst" and not self._host_network) or policy == "ClusterFirstWithHostNet"
        if not self._settings.cluster_dns or not cluster_first:
            return []  # dnsPolicy Default (or a node without cluster DNS): the node's own resolv.conf
        path = self.pod_dir / "resolv.conf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(resolv_conf(self._settings.cluster_dns, self.namespace, self._settings.cluster_domain))
        return [Mount(path, RESOLV_CONF, read_only=True)]

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
            if not self.pod_ip:
                self.pod_ip = await asyncio.to_thread(self._pod_addresses.allocate)
            await self._run_pod()
        except Exception:
            logger.exception("pod %s/%s: the node agent failed to run it", self.namespace, self.name)
            self.phase = "Failed"
            await self._write_status()
        finally:
            if self.pod_ip and not self._host_network:
                await asyncio.to_thread(self._pod_addresses.release, self.pod_ip)
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
            self._probe_failure = None
            code, state = await self._run_container(main_launch, main=True)
            self.exit_code = code
            self._container_statuses = self._main_status(state)
            # Always restarts whatever the exit; OnFailure a failed one, or one its probes killed.
            failed = code != 0 or self._probe_failure is not None
            if self._stop.is_set() or restart_policy == "Never" or (restart_policy == "OnFailure" and not failed):
                break
            # kubelet restarts the container in place; a Job counts restarts as failures.
            self.restart_count += 1
            self._last_state = state
            self._container_statuses = self._main_status(
                {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off restarting failed container (exit {code})",
                    }
                }
            )
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
            if self._runc is None:
                process = await asyncio.create_subprocess_exec(
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
                container: ProcessContainer | RuncContainer = ProcessContainer(process)
            else:
                try:
                    container = await self._runc.start(launch, self._pod, log)
                except (OSError, subprocess.CalledProcessError, ContainerConfigError) as error:
                    return self._start_failed(launch, log, error, started_at, main=main)
        self.container = container
        self.process = container.process
        container_id = container.uri
        probes: ContainerProbes | None = None
        if main:
            self.phase = "Running"
            probes = self._container_probes(launch, container, started_at)
            ready_at_once = not probes.has_startup and not probes.has_readiness
            self._running_status(started_at, container_id, started=not probes.has_startup, ready=ready_at_once)
            await self._write_status()
            probes.start()
        try:
            returncode = await self._wait_or_stop(container)
        finally:
            if probes is not None:
                await probes.stop()
            with contextlib.suppress(ProcessLookupError):
                container.kill()  # whatever the container left behind ends with it
            await container.close()
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

    def _start_failed(
        self, launch: ContainerLaunch, log: Any, error: BaseException, started_at: str, *, main: bool
    ) -> tuple[int, JsonObject]:
        """The runtime could not start the container: kubelet's StartError, exit 128, with why in its log."""
        detail = (
            error.stderr.decode(errors="replace").strip() if isinstance(error, subprocess.CalledProcessError) else ""
        )
        message = f"{error}{': ' + detail if detail else ''}"
        log.write(f"node agent: cannot start container {launch.name!r}: {message}\n".encode())
        logger.warning("pod %s/%s: cannot start container %s: %s", self.namespace, self.name, launch.name, message)
        if main:
            self._set_ready(False, "PodCompleted")
        terminated: JsonObject = {
            "exitCode": EXIT_START_FAILED,
            "reason": "StartError",
            "message": message[-1000:],
            "startedAt": started_at,
            "finishedAt": now_rfc3339(),
        }
        return EXIT_START_FAILED, {"terminated": terminated}

    def _running_status(self, started_at: str, container_id: str, *, started: bool, ready: bool) -> None:
        self._set_ready(ready, "" if ready else "ContainersNotReady")
        self._container_statuses = self._main_status({"running": {"startedAt": started_at}}, ready=ready)
        self._container_statuses[0]["started"] = started
        self._container_statuses[0]["containerID"] = container_id

    def _container_probes(
        self, launch: ContainerLaunch, running: ProcessContainer | RuncContainer, started_at: str
    ) -> ContainerProbes:
        """The main container's probes; their verdicts update its status, and a failed startup or liveness probe
        kills it as kubelet does (SIGTERM, then SIGKILL after the grace period)."""
        container = self._spec["containers"][0]
        container_id = running.uri
        process = running.process
        state = {"started": not container.get("startupProbe"), "ready": False}

        def report() -> None:
            if process.returncode is None and not self._stop.is_set():
                self._running_status(started_at, container_id, started=state["started"], ready=state["ready"])
                self._in_background(self._write_status())

        def on_started() -> None:
            state["started"] = True
            report()

        def on_ready(ready: bool) -> None:
            state["ready"] = ready
            report()

        def on_failed(message: str, probe: JsonObject) -> None:
            logger.info("pod %s/%s: %s; killing the container", self.namespace, self.name, message)
            self._probe_failure = message
            self._in_background(self._kill_for_probe(running, probe))

        return ContainerProbes(
            container,
            host=self.pod_ip,
            pid=running.pid,
            env=launch.env,
            user=running.user if isinstance(running, RuncContainer) else None,
            on_started=on_started,
            on_ready=on_ready,
            on_failed=on_failed,
        )

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _kill_for_probe(self, running: ProcessContainer | RuncContainer, probe: JsonObject) -> None:
        """The failed probe's own terminationGracePeriodSeconds wins over the pod's, as kubelet has it."""
        grace = probe.get("terminationGracePeriodSeconds")
        grace_seconds = float(grace) if grace is not None else self.default_grace_seconds()
        with contextlib.suppress(ProcessLookupError):
            running.signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(running.process.wait(), grace_seconds)
        if running.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                running.kill()

    async def _wait_or_stop(self, running: ProcessContainer | RuncContainer) -> int:
        process = running.process
        exited = asyncio.create_task(process.wait())
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not exited.done():
            with contextlib.suppress(ProcessLookupError):
                running.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), self._grace_seconds or 0)
            except TimeoutError:
                self._kill_group()
                await asyncio.wait_for(exited, self._settings.kill_timeout_seconds)
        return exited.result()

    def _kill_group(self) -> None:
        if self.container is not None:
            with contextlib.suppress(ProcessLookupError):
                self.container.kill()

    @property
    def pod(self) -> dict[str, Any]:
        return self._pod
