"""Count the API requests the operator makes over one run's whole life, by kind and verb.

Starts a real control plane (tests.harness.testbed: etcd, kube-apiserver, controller-manager, scheduler) and
runs the real operator (``python -m agentrun_operator``) with its own ServiceAccount's token and the chart's
RBAC, reaching the API server through the recording API proxy (tests.harness.apiproxy): every request the
operator makes is counted there, and only the operator's. The run lives in a namespace whose pods no node
runs, so the real Job controller makes the runner pod and this script plays the kubelet (the pod Running) and
the runner: a progress report (with a checkpoint) every --report-every seconds for --iterations iterations,
then the outcome Succeeded; then the run is deleted. Time is scaled down: the defaults keep production's
ratio of the runner's report interval to the operator's status interval (2 s : 2 s) at a tenth of the time.

Against the count it prints the minimum the run needs, worked out apart from the operator's code paths:

* its children: one create each of what ``children.build_children`` makes for this run;
* the one read of the API-key Secret its spec names (a missing Secret is a clear condition before any child);
* its status at the bounded rate: one write per phase it goes through, plus one per progress report the
  runner made, at most one per status interval of its running time (a watch on the run, outside the proxy,
  sees every status the operator wrote: which phase, which progress);
* the Events those status changes are worth (``status_sync.transition_events`` over the statuses written)
  and the one that names the children created.

and then the excess, by kind and verb: every request beyond that minimum.

    python bench/operator_api_requests.py --iterations 50 --report-every 0.2 --min-interval 0.2
"""

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from tests.harness.apiproxy import RequestLog, ThreadedApiProxy
from tests.harness.identities import operator_identity
from tests.harness.inprocess_operator import now_iso, running_pod_status
from tests.harness.local_cluster import OperatorProcess, OperatorTimings
from tests.harness.nodeagent.kube import ApiError, KubeClient, namespaced_path
from tests.harness.nodeagent.settings import NodeSettings
from tests.harness.testbed import IMAGE_ENV, KubeTestbed

from agentrun_api import conditions, constants, contract
from agentrun_api.status import AgentRunStatus
from agentrun_operator import children
from agentrun_operator.budget import compute_budget
from agentrun_operator.parsing import parse_spec
from agentrun_operator.settings import OperatorSettings
from agentrun_operator.status_sync import transition_events

RUN = "q3"
POD_WAITING_PREFIX = "waiting for runner pod "  # status_sync's message naming the pod and why it does not run
MERGE = {"Content-Type": "application/merge-patch+json"}
T = TypeVar("T")
# What the operator watches (handlers.py, permits/handlers.py).
WATCHED = {"AgentRun", "Job", "Pod", "ConfigMap", "ThrottlePool", "ClusterThrottlePool"}


class Hands:
    """What kubectl, the kubelet and the runner do in one namespace, as a cluster admin (not through the proxy)."""

    def __init__(self, admin: httpx.Client, namespace: str) -> None:
        self.admin = admin
        self.core = f"/api/v1/namespaces/{namespace}"
        self.runs = f"/apis/{constants.API_VERSION}/namespaces/{namespace}/agentruns"
        self.jobs = f"/apis/batch/v1/namespaces/{namespace}/jobs"

    def get(self, path: str) -> dict[str, Any] | None:
        answer = self.admin.get(path)
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        found: dict[str, Any] = answer.json()
        return found

    def send(self, method: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        answer = self.admin.request(method, path, json=body, headers=headers)
        if answer.is_error:
            raise RuntimeError(f"{method} {path}: HTTP {answer.status_code}: {answer.text[:500]}")

    def status(self) -> dict[str, Any]:
        run = self.get(f"{self.runs}/{RUN}") or {}
        status: dict[str, Any] = run.get("status") or {}
        return status

    def events_by_reason(self) -> Counter[str]:
        """The Events the operator posted about the run, by reason."""
        found = self.get(f"{self.core}/events") or {}
        return Counter(
            event.get("reason", "")
            for event in found.get("items", [])
            for _ in range(int(event.get("count") or 1))
            if event.get("involvedObject", {}).get("name") == RUN
        )

    def runner_pod(self) -> dict[str, Any] | None:
        job = self.get(f"{self.jobs}/{RUN}-runner")
        if job is None:
            return None
        answer = self.admin.get(
            f"{self.core}/pods",
            params={"labelSelector": f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}"},
        )
        answer.raise_for_status()
        pods: list[dict[str, Any]] = answer.json()["items"]
        return pods[0] if pods else None

    def start_pod(self, pod: dict[str, Any]) -> str:
        """What the kubelet writes once the runner container runs."""
        name: str = pod["metadata"]["name"]
        status = running_pod_status(pod)
        self.send("PATCH", f"{self.core}/pods/{name}/status", {"status": status}, MERGE)
        return name

    def report(self, uid: str, pod: str, iteration: int, **fields: Any) -> None:
        """What the runner does: replace its progress report in its own ConfigMap."""
        document = {"runUid": uid, "pod": pod, "iteration": iteration, "reportedAt": datetime.now(UTC).isoformat()}
        data = {contract.PROGRESS_KEY: json.dumps({**document, **fields})}
        self.send("PATCH", f"{self.core}/configmaps/{contract.progress_name(RUN)}", {"data": data}, MERGE)


async def eventually(check: Callable[[], T | None], what: str, within: float = 60.0) -> T:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no {what} within {within:.0f} s")


def run_manifest(iterations: int) -> dict[str, Any]:
    return {
        "apiVersion": constants.API_VERSION,
        "kind": constants.KIND,
        "metadata": {"name": RUN},
        "spec": {
            "instructions": "You are a careful researcher.",
            "input": "Compare the three vendors.",
            "model": {"name": "gpt-4.1-mini", "apiKeySecretRef": {"name": "openai", "key": "api-key"}},
            "maxExecutionTime": "30m",
            "maxIterations": iterations,
        },
    }


async def watches_open(proxy: ThreadedApiProxy) -> str:
    """Wait until the operator watches every kind it watches; returns what its start-up cost, which is not the
    run's (a watch the API server ends during the run and the operator re-opens is the run's)."""
    deadline = time.monotonic() + 60
    while not {r.kind for r in proxy.requests.between(0) if r.verb == "watch"} >= WATCHED:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the operator did not watch {sorted(WATCHED)} within 60 s")
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # and nothing else of its start is under way
    requests = proxy.requests.between(0)
    lists = ", ".join(f"{kind or path} {n}" for (kind, path), n in sorted(_lists(requests).items()))
    return (
        f"operator start-up, not counted below: {len(requests)} requests"
        f" (watches {requests.count(verb='watch')}; lists and discovery: {lists})"
    )


def _lists(requests: RequestLog) -> Counter[tuple[str, str]]:
    return Counter((r.kind, "" if r.kind else r.path) for r in requests if r.verb == "list" or not r.verb)


async def watch_statuses(kubeconfig: Path, namespace: str, statuses: list[dict[str, Any]]) -> None:
    """Every status of the run as the API server stores it, in order (a watch, as a cluster admin)."""
    path = namespaced_path(constants.API_VERSION, constants.PLURAL, namespace)
    async with KubeClient(str(kubeconfig), request_timeout_seconds=60) as admin:
        while True:
            with contextlib.suppress(ApiError, OSError, asyncio.TimeoutError):
                async for event in admin.watch(path):
                    status = event.get("object", {}).get("status") or {}
                    if event.get("type") in ("ADDED", "MODIFIED") and (not statuses or statuses[-1] != status):
                        statuses.append(status)


def _progress(status: dict[str, Any]) -> tuple[Any, ...]:
    return (status.get("iteration"), status.get("usage"), status.get("lastCheckpoint"))


def other_changes(statuses: list[dict[str, Any]]) -> list[str]:
    """What changed in each stored status that brought neither a new phase nor new progress."""
    changes = []
    for before, after in itertools.pairwise(statuses):
        if before and before.get("phase") == after.get("phase") and _progress(before) == _progress(after):
            fields = sorted(key for key in {*before, *after} if before.get(key) != after.get(key))
            was = {c.get("type"): c for c in before.get("conditions") or []}
            conditions = [
                f"{c.get('type')}={c.get('status')} ({c.get('reason')})"
                for c in after.get("conditions") or []
                if was.get(c.get("type")) != c
            ]
            changes.append(
                f"{', '.join(fields)}: message {str(after.get('message'))[:120]!r}; conditions {', '.join(conditions)}"
            )
    return changes


@dataclasses.dataclass
class RunMinimum:
    """What one run's life needs from the operator, by (kind, verb), and why."""

    counts: Counter[tuple[str, str]]
    notes: list[str]

    @classmethod
    def of(
        cls,
        run: dict[str, Any],
        statuses: list[dict[str, Any]],
        *,
        reports: int,
        running_seconds: float,
        min_interval: float,
    ) -> "RunMinimum":
        spec = parse_spec(run)
        now = datetime.now(UTC)
        objects = children.build_children(
            children.RunOwner.from_body(run),
            spec,
            OperatorSettings(watch_namespace=run["metadata"]["namespace"]),
            stream_token="-",
            permit_key="-",
            deadline=compute_budget(spec).deadline_from(now),
            now=now,
        )
        counts: Counter[tuple[str, str]] = Counter((obj["kind"], "create") for obj in objects)
        counts["Secret", "get"] += 1
        phases = [status.get("phase") for status in statuses if status]
        transitions = sum(1 for before, after in zip([None, *phases], phases, strict=False) if after != before)
        progress_writes = min(reports, math.floor(running_seconds / min_interval) + 1)
        # Why the pod does not run, when the scheduler or the kubelet says it (here: no node takes it until this
        # script plays the kubelet): a message the user needs, once per new reason.
        messages = [status.get("message", "") for status in statuses if status]
        pod_notes = len({m for m in messages if m.startswith(POD_WAITING_PREFIX)})
        counts[constants.KIND, "patch/status"] = transitions + progress_writes + pod_notes
        written = [AgentRunStatus.model_validate(status) for status in statuses if status]
        events = Counter(
            note.reason
            for before, after in zip([AgentRunStatus(), *written], written, strict=False)
            for note in transition_events(before, after, spec)
        )
        events[conditions.REASON_CREATED] += 1
        if not compute_budget(spec).fits:  # the warning that the worst case does not fit, once at admission
            events[conditions.REASON_BUDGET_EXCEEDS] += 1
        counts["Event", "create"] = sum(events.values())
        notes = [
            f"children: {len(objects)} creates ({', '.join(sorted({obj['kind'] for obj in objects}))})",
            "the API-key Secret's check: 1 read",
            f"status: {transitions} phases ({' -> '.join(str(p) for p in dict.fromkeys(phases))}) + {progress_writes}"
            f" progress writes (min of {reports} reports and one per {min_interval}s of {running_seconds:.1f}s"
            f" running) + {pod_notes} saying why the pod waits",
            "Events: " + ", ".join(f"{reason} {n}" for reason, n in sorted(events.items())),
        ]
        return cls(counts, notes)

    def excess(self, requests: RequestLog) -> Counter[tuple[str, str]]:
        made: Counter[tuple[str, str]] = Counter(
            (r.kind or r.path, f"{r.verb}/{r.subresource}" if r.subresource else r.verb) for r in requests
        )
        made.subtract(self.counts)
        return Counter({key: n for key, n in made.items() if n})


@dataclasses.dataclass
class Life:
    run: dict[str, Any]
    reports: int
    running_seconds: float


async def run_life(hands: Hands, iterations: int, report_every: float) -> Life:
    """Created, its pod started, `iterations` progress reports (each with a checkpoint), the outcome, deleted."""
    hands.send("POST", hands.runs, run_manifest(iterations))
    pod = await eventually(hands.runner_pod, "runner pod from the Job controller")
    run: dict[str, Any] = hands.get(f"{hands.runs}/{RUN}")  # type: ignore[assignment]
    uid = run["metadata"]["uid"]
    pod_name = hands.start_pod(pod)
    await eventually(lambda: hands.status().get("phase") == "Running", "phase Running")
    running_since = time.monotonic()
    for iteration in range(1, iterations + 1):
        usage = {"promptTokens": 100 * iteration, "completionTokens": 20 * iteration, "totalTokens": 120 * iteration}
        checkpoint = {"iteration": iteration, "time": now_iso(), "bytes": 1024}
        hands.report(uid, pod_name, iteration, usage=usage, lastCheckpoint=checkpoint)
        await asyncio.sleep(report_every)
    hands.report(uid, pod_name, iterations, outcome="Succeeded")
    await eventually(lambda: hands.status().get("phase") == "Succeeded", "phase Succeeded")
    running_seconds = time.monotonic() - running_since
    await eventually(lambda: hands.status().get("iteration") == iterations, "the last iteration in status")
    await asyncio.sleep(0.5)  # let the last Events go out
    hands.send("DELETE", f"{hands.runs}/{RUN}", {"propagationPolicy": "Background"})
    await eventually(lambda: hands.get(f"{hands.runs}/{RUN}") is None, "deletion of the run")
    return Life(run, iterations, running_seconds)


async def measure(
    testbed: KubeTestbed, state_dir: Path, iterations: int, report_every: float, min_interval: float
) -> str:
    control_plane = testbed.control_plane
    namespace = testbed.create_namespace("bench-api-requests", schedulable=False)
    hands = Hands(testbed.admin, namespace)
    hands.send(
        "POST",
        f"{hands.core}/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "openai"}, "stringData": {"api-key": "sk-bench"}},
    )
    identity = operator_identity(control_plane)
    identity.grant(namespace)
    with ThreadedApiProxy(control_plane.url, ca_file=control_plane.ca_file) as proxy:
        kubeconfig = proxy.write_kubeconfig(state_dir / "operator.kubeconfig", identity.token(), namespace=namespace)
        timings = OperatorTimings(
            status_min_interval_seconds=min_interval,
            progress_interval_seconds=min_interval,
            supervise_interval_seconds=0.5,
            outcome_grace_seconds=1.0,
            retry_delay_seconds=0.5,
        )
        env = {
            **NodeSettings().base_env,
            "PYTHONPATH": IMAGE_ENV["PYTHONPATH"],
            "KUBECONFIG": str(kubeconfig),
            "AGENTRUN_WATCH_NAMESPACE": namespace,
            **timings.env(),
        }
        operator = OperatorProcess(env, state_dir / "operator.log", startup_timeout_seconds=60)
        await operator.start()
        statuses: list[dict[str, Any]] = []
        watcher = asyncio.create_task(watch_statuses(testbed.kubeconfig, namespace, statuses))
        try:
            startup = await watches_open(proxy)
            proxy.requests.clear()
            started = time.monotonic()
            life = await run_life(hands, iterations, report_every)
            lifetime = time.monotonic() - started
        except BaseException:
            print(operator.log()[-3000:])
            raise
        finally:
            watcher.cancel()
            await operator.stop()
        requests = proxy.requests.between(0)
        refused = [r for r in requests if r.code in (401, 403)]
    events = hands.events_by_reason()
    testbed.delete_namespace(namespace)
    status_writes = requests.count(verb="patch", kind="AgentRun", subresource="status")
    reads = sum(requests.count(verb=verb) for verb in ("get", "list"))
    writes = sum(requests.count(verb=verb) for verb in ("create", "update", "patch", "delete"))
    # Scaled to production's status interval, so "per second" reads as it would in a cluster.
    production_seconds = lifetime * 2.0 / min_interval
    lines = [
        startup,
        f"{iterations} iterations, a report every {report_every}s, status writes at most every {min_interval}s",
        requests.summary(),
        f"requests per run: {len(requests)} (reads {reads}, writes {writes}, watches {requests.count(verb='watch')})"
        f" over {lifetime:.1f} s",
        f"status writes: {status_writes}, {status_writes / lifetime * min_interval / 2.0:.2f} per second at"
        f" product intervals (2 s; the run's life scaled to {production_seconds:.0f} s)",
    ]
    minimum = RunMinimum.of(
        life.run, statuses, reports=life.reports, running_seconds=life.running_seconds, min_interval=min_interval
    )
    lines.append(f"minimum the run needs: {sum(minimum.counts.values())}")
    lines += [f"  {note}" for note in minimum.notes]
    excess = minimum.excess(requests)
    lines.append(f"excess over the minimum: {sum(n for n in excess.values() if n > 0)}")
    lines += [f"  {kind} {verb}: {n:+d}" for (kind, verb), n in sorted(excess.items())]
    lines.append("Events posted: " + ", ".join(f"{reason} {n}" for reason, n in sorted(events.items())))
    lines.append(f"statuses the watch saw change: {len([s for s in statuses if s])} of {status_writes} status writes")
    lines += [
        f"  a status write with neither a new phase nor new progress: {change}" for change in other_changes(statuses)
    ]
    if refused:
        lines.append("refused by RBAC or authentication: " + ", ".join(f"{r.verb} {r.path} {r.code}" for r in refused))
    return "\n".join(lines)


async def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="operator-api-requests-") as name:
        state_dir = Path(name)
        testbed = KubeTestbed(state_dir / "testbed")
        await asyncio.to_thread(testbed.start)
        try:
            print(f"on Kubernetes {testbed.version} (the real control plane; the operator as its ServiceAccount)")
            print(await measure(testbed, state_dir, args.iterations, args.report_every, args.min_interval))
        finally:
            await asyncio.to_thread(testbed.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--report-every", type=float, default=0.2, help="seconds between progress reports")
    parser.add_argument("--min-interval", type=float, default=0.2, help="AGENTRUN_STATUS_MIN_INTERVAL_SECONDS")
    parser.add_argument("--quick", action="store_true", help="5 iterations: a smoke test of the benchmark")
    args = parser.parse_args()
    if args.quick:
        args.iterations = 5
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
