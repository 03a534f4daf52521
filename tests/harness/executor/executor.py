"""The local Job executor: the Job controller and a kubelet for one machine, over the Kubernetes API.

It lists and watches batch/v1 Jobs and Pods through any API server named by a kubeconfig, creates
each Job's pods as the Job controller does, runs every pod as local processes (``PodRuntime``) and
writes Pod and Job status back. It is test tooling, not part of the product.
"""

import asyncio
import contextlib
import logging
import secrets
import signal
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.harness.executor.jobs import (
    BACKOFF_LIMIT_EXCEEDED,
    COMPLETIONS_REACHED,
    CONTROLLER_UID_LABEL,
    DEADLINE_EXCEEDED,
    DEFAULT_BACKOFF_LIMIT,
    JOB_NAME_LABEL,
    LEGACY_CONTROLLER_UID_LABEL,
    LEGACY_JOB_NAME_LABEL,
    RESUMED,
    SUSPENDED,
    TRACKING_FINALIZER,
    evaluate_pod_failure_policy,
    is_finished,
    job_condition,
    owned_by,
    pod_is_terminal,
    set_condition,
    success_reached,
    wanted_active,
)
from tests.harness.nodeagent.kube import JsonObject, KubeClient, namespaced_path
from tests.harness.nodeagent.pods import (
    CREDENTIALS_MOUNT_PATH,
    KUBECONFIG_FILE,
    PodRuntime,
    check_mount_namespaces,
    condition,
    now_rfc3339,
)
from tests.harness.nodeagent.settings import ExecutorSettings

logger = logging.getLogger(__name__)

# The alphabet Kubernetes uses for generated name suffixes (no vowels, no look-alikes).
NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _key(obj: JsonObject) -> tuple[str, str]:
    return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


class LocalJobExecutor:
    """Plays Job controller and kubelet for the Jobs of one namespace (or all) of an API server.

    Use as ``async with LocalJobExecutor(kubeconfig, "default", state_dir=tmp) as executor``.
    ``state_dir`` holds pod directories, container logs and the persistent claims' data.
    """

    def __init__(
        self,
        kubeconfig: str | Path,
        namespace: str | None = None,
        *,
        state_dir: Path,
        settings: ExecutorSettings | None = None,
    ) -> None:
        self.kubeconfig = str(kubeconfig)
        self.namespace = namespace
        self.state_dir = Path(state_dir)
        self.settings = settings or ExecutorSettings()
        self._kube: KubeClient | None = None
        self._credentials_dir = self.state_dir / "credentials"
        self._runtimes: dict[tuple[str, str], PodRuntime] = {}
        self._suspension_stops: set[tuple[str, str]] = set()  # pods ended by suspension: no failure
        self._final_deletes: set[tuple[str, str]] = set()
        self._last_failure_at: dict[tuple[str, str], float] = {}  # loop time of a Job's last counted failure
        self._wake = asyncio.Event()
        self._next_timer: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.reconcile_errors: list[BaseException] = []

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(check_mount_namespaces)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # Containers read the kubeconfig from a copy mounted at a fixed path (see CREDENTIALS_MOUNT_PATH).
        self._credentials_dir.mkdir(exist_ok=True)
        (self._credentials_dir / KUBECONFIG_FILE).write_text(Path(self.kubeconfig).read_text())
        Path(CREDENTIALS_MOUNT_PATH).mkdir(parents=True, exist_ok=True)
        self._kube = await KubeClient(self.kubeconfig).__aenter__()
        self._tasks = [
            asyncio.create_task(self._watch(namespaced_path("batch/v1", "jobs", self.namespace)), name="watch jobs"),
            asyncio.create_task(self._watch(namespaced_path("v1", "pods", self.namespace)), name="watch pods"),
            asyncio.create_task(self._reconcile_forever(), name="reconcile"),
        ]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # The flag as well as cancel(): a library may turn a cancellation into its own exception.
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=self.settings.kill_timeout_seconds)
        await asyncio.gather(*(runtime.kill_now() for runtime in self._runtimes.values()), return_exceptions=True)
        if self._kube is not None:
            await self._kube.__aexit__(None, None, None)

    @property
    def kube(self) -> KubeClient:
        if self._kube is None:
            raise RuntimeError("LocalJobExecutor is used outside its `async with` block")
        return self._kube

    def poke(self) -> None:
        """Reconcile now rather than at the next event or resync."""
        self._wake.set()

    # -- inspection and chaos, for tests -------------------------------------------------------

    def runtime(self, namespace: str, pod: str) -> PodRuntime:
        try:
            return self._runtimes[namespace, pod]
        except KeyError:
            raise LookupError(f"the executor runs no pod {namespace}/{pod}") from None

    def pod_keys(self) -> list[tuple[str, str]]:
        """(namespace, name) of every pod this executor has run."""
        return list(self._runtimes)

    def job_runtimes(self, namespace: str, job: str) -> list[PodRuntime]:
        """The pods this executor ran for a Job, oldest first."""
        return [
            runtime
            for (pod_namespace, _), runtime in self._runtimes.items()
            if pod_namespace == namespace and (runtime.pod["metadata"].get("labels") or {}).get(JOB_NAME_LABEL) == job
        ]

    def kill_pod_process(self, namespace: str, pod: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal a pod's container as a crash or the OOM killer would (SIGKILL: exit 137)."""
        self.runtime(namespace, pod).send_signal(sig)

    async def evict(self, namespace: str, pod: str) -> None:
        """The Eviction API: DisruptionTarget condition, then a graceful delete (SIGTERM, grace, SIGKILL)."""
        await self.runtime(namespace, pod).add_condition(
            "DisruptionTarget", "EvictionByEvictionAPI", "Eviction API: evicting"
        )
        await self.kube.delete(namespaced_path("v1", "pods", namespace, pod))
        self.poke()

    def read_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        """A container's output so far (stdout and stderr), like `kubectl logs`."""
        runtime = self.runtime(namespace, pod)
        name = container or runtime.pod["spec"]["containers"][0]["name"]
        path = runtime.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- loops ---------------------------------------------------------------------------------

    async def _watch(self, path: str) -> None:
        while not self._closing:
            try:
                async for _event in self.kube.watch(path):
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.debug("watch %s ended: %s", path, error)
            self._wake.set()
            await asyncio.sleep(self.settings.resync_interval_seconds)

    async def _reconcile_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            self._wake.clear()
            self._next_timer = None
            try:
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.exception("local executor: reconcile failed")
                self.reconcile_errors.append(error)
            timeout = self.settings.resync_interval_seconds
            if self._next_timer is not None:
                timeout = max(0.0, min(timeout, self._next_timer - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _timer(self, seconds_from_now: float) -> None:
        at = asyncio.get_running_loop().time() + max(0.0, seconds_from_now)
        self._next_timer = at if self._next_timer is None else min(self._next_timer, at)

    async def _reconcile(self) -> None:
        jobs = await self.kube.list(namespaced_path("batch/v1", "jobs", self.namespace))
        pods = await self.kube.list(namespaced_path("v1", "pods", self.namespace))
        await self._play_kubelet(pods)
        jobs_by_key = {_key(job): job for job in jobs}
        for job in jobs:
            await self._sync_job(job, [pod for pod in pods if owned_by(pod, job)])
        await self._collect_orphans(pods, jobs_by_key)

    # -- kubelet -------------------------------------------------------------------------------

    def _start_pod(self, pod: JsonObject) -> None:
        runtime = PodRuntime(
            kube=self.kube,
            pod=pod,
            state_dir=self.state_dir,
            credentials_dir=self._credentials_dir,
            settings=self.settings,
            notify=self.poke,
        )
        self._runtimes[_key(pod)] = runtime
        runtime.start()

    async def _play_kubelet(self, pods: list[JsonObject]) -> None:
        present = set()
        for pod in pods:
            key = _key(pod)
            present.add(key)
            metadata = pod["metadata"]
            runtime = self._runtimes.get(key)
            if (
                runtime is not None
                and runtime.finished.is_set()
                and metadata.get("uid") != runtime.pod["metadata"].get("uid")
            ):
                runtime = None  # a new pod under an old name (different uid): run it too
            if runtime is None:
                if not pod_is_terminal(pod) and not metadata.get("deletionTimestamp"):
                    self._start_pod(pod)
                continue
            if metadata.get("deletionTimestamp"):
                if not runtime.finished.is_set():
                    # A real API server copies the grace period into deletionGracePeriodSeconds; an
                    # emulator without pod graceful deletion writes 0, so 0 means the pod's own period
                    # here (a force delete is therefore graceful too; see README).
                    grace = float(metadata.get("deletionGracePeriodSeconds") or 0)
                    runtime.terminate(grace if grace > 0 else runtime.default_grace_seconds(), "Deleted")
                elif key not in self._final_deletes and pod_is_terminal(pod):
                    # Kubelet's last word on a deleted pod: remove it now that its containers are gone.
                    self._final_deletes.add(key)
                    await self.kube.delete(namespaced_path("v1", "pods", key[0], key[1]), grace_period_seconds=0)
        for key, runtime in self._runtimes.items():
            if key not in present and not runtime.finished.is_set() and not runtime.stopping:
                runtime.terminate(runtime.default_grace_seconds(), "Deleted")  # removed without a grace period

    # -- Job controller ------------------------------------------------------------------------

    async def _create_pod(self, job: JsonObject) -> None:
        job_meta = job["metadata"]
        template = (job.get("spec") or {}).get("template") or {}
        template_meta = template.get("metadata") or {}
        labels = dict(template_meta.get("labels") or {})
        labels[JOB_NAME_LABEL] = labels[LEGACY_JOB_NAME_LABEL] = job_meta["name"]
        owner: JsonObject = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": job_meta["name"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        if job_meta.get("uid"):
            labels[CONTROLLER_UID_LABEL] = labels[LEGACY_CONTROLLER_UID_LABEL] = job_meta["uid"]
            owner["uid"] = job_meta["uid"]
        suffix = "".join(secrets.choice(NAME_SUFFIX_ALPHABET) for _ in range(5))
        spec = dict(template.get("spec") or {})
        spec["nodeName"] = self.settings.node_name  # the scheduler's part: there is one node
        pod: JsonObject = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{job_meta['name']}-{suffix}",
                "generateName": f"{job_meta['name']}-",
                "namespace": job_meta["namespace"],
                "labels": labels,
                "annotations": dict(template_meta.get("annotations") or {}),
                "ownerReferences": [owner],
                "finalizers": [TRACKING_FINALIZER],
            },
            "spec": spec,
            "status": {"phase": "Pending"},
        }
        created = await self.kube.create(namespaced_path("v1", "pods", job_meta["namespace"]), pod)
        created.setdefault("metadata", pod["metadata"])
        created["metadata"].setdefault("namespace", job_meta["namespace"])
        self._start_pod(created)

    async def _delete_pod(self, pod: JsonObject, *, for_suspension: bool = False) -> None:
        if pod["metadata"].get("deletionTimestamp"):
            return
        if for_suspension:
            self._suspension_stops.add(_key(pod))
        await self.kube.delete(namespaced_path("v1", "pods", *_key(pod)))
        self.poke()

    async def _release(self, pods: list[JsonObject]) -> None:
        """Remove the tracking finalizer of pods the Job status now accounts for."""
        for pod in pods:
            finalizers = [f for f in pod["metadata"].get("finalizers") or [] if f != TRACKING_FINALIZER]
            await self.kube.merge_patch(
                namespaced_path("v1", "pods", *_key(pod)), {"metadata": {"finalizers": finalizers}}
            )

    def _pod_failure_verdict(self, job: JsonObject, pod: JsonObject) -> tuple[str, str]:
        if _key(pod) in self._suspension_stops:
            return "Ignore", ""
        if (pod.get("spec") or {}).get("restartPolicy") != "Never":
            return "Count", ""  # pod failure policies apply to restartPolicy Never only
        verdict = evaluate_pod_failure_policy(job, pod)
        return verdict.action, verdict.message

    async def _sync_job(self, job: JsonObject, pods: list[JsonObject]) -> None:
        key = _key(job)
        spec = job.get("spec") or {}
        status = job.get("status") or {}
        path = namespaced_path("batch/v1", "jobs", key[0], key[1])
        untracked = [
            pod
            for pod in pods
            if pod_is_terminal(pod) and TRACKING_FINALIZER in (pod["metadata"].get("finalizers") or [])
        ]
        active = [pod for pod in pods if not pod_is_terminal(pod) and not pod["metadata"].get("deletionTimestamp")]
        terminating = [pod for pod in pods if not pod_is_terminal(pod) and pod["metadata"].get("deletionTimestamp")]

        if job["metadata"].get("deletionTimestamp") or is_finished(job):
            for pod in active:
                await self._delete_pod(pod)
            await self._release(untracked)
            self._expire_finished(job)
            return

        now = datetime.now(UTC)
        succeeded, failed = int(status.get("succeeded") or 0), int(status.get("failed") or 0)
        failure_target: tuple[str, str] | None = None
        existing_target = job_condition(job, "FailureTarget")
        if existing_target is not None:
            failure_target = (existing_target.get("reason", ""), existing_target.get("message", ""))
        for pod in untracked:
            if pod["status"]["phase"] == "Succeeded":
                succeeded += 1
                continue
            action, message = self._pod_failure_verdict(job, pod)
            if action == "Ignore":
                continue
            failed += 1
            self._last_failure_at[key] = asyncio.get_running_loop().time()
            if action == "FailJob" and failure_target is None:
                failure_target = ("PodFailurePolicy", message)

        conditions: list[JsonObject] = list(status.get("conditions") or [])
        start_time: str | None = status.get("startTime")
        completion_time: str | None = status.get("completionTime")
        created = 0
        if spec.get("suspend"):
            if job_condition(job, "Suspended") is None:
                conditions = set_condition(conditions, condition("Suspended", True, *SUSPENDED))
            for pod in active:
                await self._delete_pod(pod, for_suspension=True)
            active = []
        else:
            if job_condition(job, "Suspended") is not None:
                conditions = set_condition(conditions, condition("Suspended", False, *RESUMED))
                start_time = None  # reset on every resume, and so is the deadline's clock
            start_time = start_time or now_rfc3339()
            restarts = sum(
                int(container.get("restartCount") or 0)
                for pod in active
                for container in (pod.get("status") or {}).get("containerStatuses") or []
            )
            deadline = spec.get("activeDeadlineSeconds")
            if failure_target is None:
                if failed + restarts > int(spec.get("backoffLimit", DEFAULT_BACKOFF_LIMIT)):
                    failure_target = BACKOFF_LIMIT_EXCEEDED
                elif deadline is not None:
                    remaining = float(deadline) - (now - _parse_time(start_time)).total_seconds()
                    if remaining <= 0:
                        failure_target = DEADLINE_EXCEEDED
                    else:
                        self._timer(remaining)
            if failure_target is not None:
                conditions = set_condition(conditions, condition("FailureTarget", True, *failure_target))
                for pod in active:
                    await self._delete_pod(pod)
                if not active and not terminating:
                    conditions = set_condition(conditions, condition("Failed", True, *failure_target))
            elif success_reached(job, succeeded, len(active)):
                conditions = set_condition(conditions, condition("SuccessCriteriaMet", True, *COMPLETIONS_REACHED))
                for pod in active:
                    await self._delete_pod(pod)
                if not active and not terminating:
                    conditions = set_condition(conditions, condition("Complete", True, *COMPLETIONS_REACHED))
                    completion_time = now_rfc3339()
            else:
                created = await self._scale_up(job, succeeded, failed, active, terminating)

        ready = sum(1 for pod in active if self._pod_ready(pod))
        new_status: dict[str, Any] = {
            "active": len(active) + created,
            "ready": ready,
            "terminating": len(terminating),
            "succeeded": succeeded,
            "failed": failed,
            "startTime": start_time,
            "conditions": conditions,
        }
        if completion_time is not None:
            new_status["completionTime"] = completion_time
        if any(status.get(field) != value for field, value in new_status.items()):
            await self.kube.merge_patch(path + "/status", {"status": new_status})
        await self._release(untracked)

    async def _scale_up(
        self, job: JsonObject, succeeded: int, failed: int, active: list[JsonObject], terminating: list[JsonObject]
    ) -> int:
        spec = job.get("spec") or {}
        default_policy = "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed"
        waiting_for = len(terminating) if spec.get("podReplacementPolicy", default_policy) == "Failed" else 0
        missing = wanted_active(job, succeeded) - len(active) - waiting_for
        if missing <= 0:
            return 0
        last_failure_at = self._last_failure_at.get(_key(job))
        if last_failure_at is not None and failed > 0 and self.settings.pod_backoff_base_seconds > 0:
            since = asyncio.get_running_loop().time() - last_failure_at
            delay = self.settings.pod_backoff_base_seconds * 2 ** (failed - 1) - since
            if delay > 0:
                self._timer(delay)
                return 0
        for _ in range(missing):
            await self._create_pod(job)
        return missing

    @staticmethod
    def _pod_ready(pod: JsonObject) -> bool:
        return any(
            entry.get("type") == "Ready" and entry.get("status") == "True"
            for entry in (pod.get("status") or {}).get("conditions") or []
        )

    def _expire_finished(self, job: JsonObject) -> None:
        """The TTL-after-finished controller: delete a finished Job once its TTL has passed."""
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        finished = job_condition(job, "Complete") or job_condition(job, "Failed")
        if ttl is None or finished is None or job["metadata"].get("deletionTimestamp"):
            return
        left = float(ttl) - (datetime.now(UTC) - _parse_time(finished["lastTransitionTime"])).total_seconds()
        if left > 0:
            self._timer(left)
            return
        task = asyncio.create_task(self.kube.delete(namespaced_path("batch/v1", "jobs", *_key(job))))
        task.add_done_callback(lambda _: self.poke())

    async def _collect_orphans(self, pods: list[JsonObject], jobs: dict[tuple[str, str], JsonObject]) -> None:
        """The garbage collector's part: pods whose controlling Job is gone are deleted."""
        for pod in pods:
            refs = [
                ref
                for ref in pod["metadata"].get("ownerReferences") or []
                if ref.get("controller") and ref.get("kind") == "Job"
            ]
            if not refs or (pod["metadata"]["namespace"], refs[0]["name"]) in jobs:
                continue
            await self._delete_pod(pod)
            if pod_is_terminal(pod) and TRACKING_FINALIZER in (pod["metadata"].get("finalizers") or []):
                await self._release([pod])
