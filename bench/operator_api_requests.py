"""Count the API requests the operator makes over one run's whole life, by kind and verb.

Starts a real control plane (tests.harness.testbed: etcd, kube-apiserver, controller-manager, scheduler) and
runs the real operator (``python -m agentrun_operator``) with its own ServiceAccount's token and the chart's
RBAC, reaching the API server through the recording API proxy (tests.harness.apiproxy): every request the
operator makes is counted there, and only the operator's. The run lives in a namespace whose pods no node
runs, so the real Job controller makes the runner pod and this script plays the kubelet (the pod Running) and
the runner: a progress report (with a checkpoint) every --report-every seconds for --iterations iterations,
then the outcome Succeeded; then the run is deleted. Time is scaled down: the defaults keep production's
ratio of the runner's report interval to the operator's status interval (2 s : 2 s) at a tenth of the time.

    python bench/operator_api_requests.py --iterations 50 --report-every 0.2 --min-interval 0.2
"""

import argparse
import asyncio
import json
import logging
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
from tests.harness.nodeagent.settings import NodeSettings
from tests.harness.testbed import IMAGE_ENV, KubeTestbed

from agentrun_api import constants, contract

RUN = "q3"
MERGE = {"Content-Type": "application/merge-patch+json"}
T = TypeVar("T")
WATCHED = {"AgentRun", "Job", "Pod", "ConfigMap", "ThrottlePool"}  # what the operator watches (handlers.py)


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


async def run_life(hands: Hands, iterations: int, report_every: float) -> None:
    """Created, its pod started, `iterations` progress reports (each with a checkpoint), the outcome, deleted."""
    hands.send("POST", hands.runs, run_manifest(iterations))
    pod = await eventually(hands.runner_pod, "runner pod from the Job controller")
    uid = hands.get(f"{hands.runs}/{RUN}")["metadata"]["uid"]  # type: ignore[index]
    pod_name = hands.start_pod(pod)
    await eventually(lambda: hands.status().get("phase") == "Running", "phase Running")
    for iteration in range(1, iterations + 1):
        usage = {"promptTokens": 100 * iteration, "completionTokens": 20 * iteration, "totalTokens": 120 * iteration}
        checkpoint = {"iteration": iteration, "time": now_iso(), "bytes": 1024}
        hands.report(uid, pod_name, iteration, usage=usage, lastCheckpoint=checkpoint)
        await asyncio.sleep(report_every)
    hands.report(uid, pod_name, iterations, outcome="Succeeded")
    await eventually(lambda: hands.status().get("phase") == "Succeeded", "phase Succeeded")
    await eventually(lambda: hands.status().get("iteration") == iterations, "the last iteration in status")
    await asyncio.sleep(0.5)  # let the last Events go out
    hands.send("DELETE", f"{hands.runs}/{RUN}", {"propagationPolicy": "Background"})
    await eventually(lambda: hands.get(f"{hands.runs}/{RUN}") is None, "deletion of the run")


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
        try:
            startup = await watches_open(proxy)
            proxy.requests.clear()
            started = time.monotonic()
            await run_life(hands, iterations, report_every)
            lifetime = time.monotonic() - started
        except BaseException:
            print(operator.log()[-3000:])
            raise
        finally:
            await operator.stop()
        requests = proxy.requests.between(0)
        refused = [r for r in requests if r.code in (401, 403)]
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
