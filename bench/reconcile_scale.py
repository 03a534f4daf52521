"""Reconcile latency, throughput and operator memory at scale, against the same objects created directly.

    python bench/reconcile_scale.py [--runs 1000 5000] [--concurrency 16] [--quick]

Starts one real control plane (tests.harness.testbed: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler) and, for each run count N, runs two phases on it, each in a fresh namespace whose pods no
node runs (the real Job controller makes each Job's pod; the scheduler finds no node for it; nothing runs):

* operator: the real operator as a process (``python -m agentrun_operator``, product intervals, its own
  ServiceAccount's token and the chart's RBAC) reconciles N AgentRuns created by this script; a watch on
  Jobs stamps when each run's Job exists. One warm-up run's Job exists before the N are created, so the
  operator's watches are open and the API server's caches of its kinds are filled (the baseline, second,
  finds them filled).
* baseline: this script creates the same N AgentRuns and, as soon as each is stored, the objects the
  operator creates for a run (agentrun_operator.children.build_children: ServiceAccount, Role, RoleBinding,
  ConfigMaps, Secret, Service, Job, owned by the run), one after another, with the operator's token, and
  the same client concurrency. This is the API server's own limit for "AgentRun in, children out"; what the
  operator does beyond it (the API-key Secret read, status writes, Events, watches) is its overhead.

Prints p50/p99 latency from AgentRun stored to Job stored, the total time until all Jobs exist, the ratio
operator/baseline, the CPU of kube-apiserver and etcd in each phase, and the operator's resident memory
with N live runs: its growth per live run from the warm-up run's (and from idle).

    python bench/reconcile_scale.py --runs 1000 --profile cpu|memory|census [--operator-log op.log]

profiles the operator phase alone (no baseline: a profiled operator's times compare with nothing) through
bench/profiling/sitecustomize.py, and keeps the report next to the operator's log.
"""

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), *(str(ROOT / part) for part in ("api", "common", "operator", "runner_image"))]

from tests.harness.identities import operator_identity  # noqa: E402
from tests.harness.local_cluster import OperatorProcess  # noqa: E402
from tests.harness.nodeagent.kube import ApiError, KubeClient, namespaced_path  # noqa: E402
from tests.harness.procstat import cpu_seconds, rss_mib  # noqa: E402
from tests.harness.testbed import IMAGE_ENV, KubeTestbed  # noqa: E402

from agentrun_operator import children  # noqa: E402
from agentrun_operator.budget import compute_budget  # noqa: E402
from agentrun_operator.parsing import parse_spec  # noqa: E402
from agentrun_operator.settings import OperatorSettings  # noqa: E402

# --operator-log PATH: keep the operator's log of the last phase there, to see where a run waited.
OPERATOR_LOG = sys.argv[sys.argv.index("--operator-log") + 1] if "--operator-log" in sys.argv else ""
# --profile cpu|memory|census: profile the operator process (bench/profiling/sitecustomize.py), report next to the log.
PROFILE = sys.argv[sys.argv.index("--profile") + 1] if "--profile" in sys.argv else ""
PROFILE_REPORT_SECONDS = 300  # a tracemalloc snapshot of thousands of runs takes a while
# Where each kind of child is created: (API group version, plural).
CHILD_RESOURCES = {
    "ServiceAccount": ("v1", "serviceaccounts"),
    "Role": ("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings"),
    "ConfigMap": ("v1", "configmaps"),
    "Secret": ("v1", "secrets"),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
    "Service": ("v1", "services"),
    "Job": ("batch/v1", "jobs"),
}


@dataclass
class PhaseResult:
    latencies: list[float]  # seconds from AgentRun stored to Job stored, one per run
    total_seconds: float  # first create sent to last Job stored
    apiserver_cpu_seconds: float = 0.0
    etcd_cpu_seconds: float = 0.0
    operator_cpu_seconds: float = 0.0
    operator_rss_mib: float = 0.0  # with every run live
    operator_idle_rss_mib: float = 0.0  # started, no run yet
    operator_warm_rss_mib: float = 0.0  # the warm-up run live: every code path and connection in use once
    creates_per_run: int = 0

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class Bench:
    testbed: KubeTestbed
    state_dir: Path
    concurrency: int
    wait_seconds: float

    def component_pid(self, name: str) -> int:
        for component in self.testbed.control_plane.components:
            if component.name == name and component.process is not None:
                return component.process.pid
        raise RuntimeError(f"no {name} process")

    async def namespace(self, prefix: str) -> tuple[str, Path]:
        """A fresh namespace whose pods no node runs, the model Secret in it, and the operator's ServiceAccount
        granted there; returns it and a kubeconfig with the operator's token."""
        namespace = await asyncio.to_thread(self.testbed.create_namespace, prefix, schedulable=False)
        identity = await asyncio.to_thread(operator_identity, self.testbed.control_plane)
        await asyncio.to_thread(identity.grant, namespace)
        kubeconfig = await asyncio.to_thread(identity.kubeconfig, self.state_dir / f"{namespace}.kubeconfig", namespace)
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "model-key", "namespace": namespace},
            "stringData": {"api-key": "bench-key"},
        }
        async with KubeClient(str(self.testbed.kubeconfig), request_timeout_seconds=120) as admin:
            await admin.create(namespaced_path("v1", "secrets", namespace), secret)
        return namespace, kubeconfig


def agent_run(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "instructions": "Benchmark run.",
            "input": f"Measure the operator ({name}).",  # specs differ, as real runs do
            "model": {"name": "bench", "apiKeySecretRef": {"name": "model-key", "key": "api-key"}},
            "maxExecutionTime": "1h",
            "maxIterations": 50,
        },
    }


async def create_all(
    kube: KubeClient, namespace: str, names: list[str], concurrency: int, stored: dict[str, float], then: Any
) -> None:
    """Create the AgentRuns (and, with `then`, what it creates for each run right after it), `concurrency` at a
    time."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for name in names:
        queue.put_nowait(name)
    agentruns = namespaced_path("agentrun.dev/v1alpha1", "agentruns", namespace)

    async def worker() -> None:
        while not queue.empty():
            name = queue.get_nowait()
            created = await kube.create(agentruns, agent_run(namespace, name))
            stored[name] = time.monotonic()
            if then is not None:
                await then(created)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def watch_jobs(
    kube: KubeClient, namespace: str, seen: dict[str, float], runs: set[str], done: asyncio.Event
) -> None:
    """Stamp the arrival of the Job (label agentrun.dev/run) of every run in `runs`, until all are seen."""
    expected = len(runs)
    jobs = namespaced_path("batch/v1", "jobs", namespace)
    while len(seen) < expected:
        with contextlib.suppress(ApiError, OSError, asyncio.TimeoutError):
            async for event in kube.watch(jobs):
                if event.get("type") == "ADDED":
                    run = event["object"]["metadata"].get("labels", {}).get("agentrun.dev/run")
                    if run in runs:
                        seen.setdefault(run, time.monotonic())
                if len(seen) >= expected:
                    break
    done.set()


async def progress(label: str, seen: dict[str, float], expected: int, done: asyncio.Event) -> None:
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 10)
        print(f"  {label}: {len(seen)}/{expected} Jobs", flush=True)


async def create_and_time(
    bench: Bench, namespace: str, label: str, runs: int, then: Any, pids: tuple[int, ...]
) -> tuple[list[float], float, list[float]]:
    """Create `runs` AgentRuns (with `then`, what it creates per run too) and wait until every run's Job exists.

    Returns the seconds from AgentRun stored to Job stored of each run, the seconds from the first
    create to the last Job, and the CPU seconds each process in `pids` spent meanwhile.
    """
    names = [f"run-{index:05d}" for index in range(runs)]
    stored: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = asyncio.Event()
    async with KubeClient(str(bench.testbed.kubeconfig), request_timeout_seconds=120) as admin:
        watcher = asyncio.create_task(watch_jobs(admin, namespace, seen, set(names), done))
        reporter = asyncio.create_task(progress(label, seen, runs, done))
        await asyncio.sleep(0.5)  # the watch is open before the first create
        started = time.monotonic()
        cpu_before = [cpu_seconds(pid) for pid in pids]
        await create_all(admin, namespace, names, bench.concurrency, stored, then)
        try:
            await asyncio.wait_for(done.wait(), bench.wait_seconds)
        finally:
            watcher.cancel()
            reporter.cancel()
    total = max(seen.values()) - started
    cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True)]
    return [seen[name] - stored[name] for name in names], total, cpu


async def warm_up(bench: Bench, namespace: str) -> None:
    """One run before the measured ones, until its Job exists: the operator's watches are open and the API
    server's caches of its kinds are filled (a first list of a kind can be refused while they fill)."""
    agentruns = namespaced_path("agentrun.dev/v1alpha1", "agentruns", namespace)
    async with KubeClient(str(bench.testbed.kubeconfig), request_timeout_seconds=120) as admin:
        await admin.create(agentruns, agent_run(namespace, "warm-up"))
        job = namespaced_path("batch/v1", "jobs", namespace, children.job_name("warm-up"))
        deadline = time.monotonic() + 60
        while await admin.get(job) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the operator made no Job for the warm-up run within 60 s")
            await asyncio.sleep(0.1)


async def operator_phase(bench: Bench, runs: int) -> PhaseResult:
    namespace, kubeconfig = await bench.namespace("bench-operator")
    env = {
        **os.environ,
        "PYTHONPATH": IMAGE_ENV["PYTHONPATH"],
        "KUBECONFIG": str(kubeconfig),
        "AGENTRUN_WATCH_NAMESPACE": namespace,
        "AGENTRUN_LOG_FORMAT": "json",
    }
    profile_out = bench.state_dir / f"operator-{runs}.{PROFILE}-profile"
    if PROFILE:
        env["PYTHONPATH"] = os.pathsep.join((str(ROOT / "bench" / "profiling"), env["PYTHONPATH"]))
        env["AGENTRUN_BENCH_PROFILE"], env["AGENTRUN_BENCH_PROFILE_OUT"] = PROFILE, str(profile_out)
    operator = OperatorProcess(env, bench.state_dir / f"operator-{runs}.log", startup_timeout_seconds=60)
    await operator.start()
    try:
        assert operator.process is not None
        await asyncio.sleep(1)
        idle = rss_mib(operator.process.pid)
        await warm_up(bench, namespace)
        await asyncio.sleep(2)  # as below: its supervisor settles
        warm = rss_mib(operator.process.pid)
        pids = (bench.component_pid("kube-apiserver"), bench.component_pid("etcd"), operator.process.pid)
        latencies, total, cpu = await create_and_time(bench, namespace, "operator", runs, None, pids)
        await asyncio.sleep(2)  # supervisors settle; memory with every run live
        rss = rss_mib(operator.process.pid)
        if PROFILE:
            await write_profile(operator.process.pid, profile_out)
    finally:
        await operator.stop()
        if OPERATOR_LOG:
            await asyncio.to_thread(Path(OPERATOR_LOG).write_text, operator.log())
    return PhaseResult(latencies, total, cpu[0], cpu[1], cpu[2], rss, idle, warm)


async def write_profile(pid: int, out: Path) -> None:
    """Have the profiled operator write its report (SIGUSR1) and keep it next to the operator's log."""
    os.kill(pid, signal.SIGUSR1)
    kept = Path(OPERATOR_LOG or "operator.log").with_suffix(f".{PROFILE}-profile.txt")
    await asyncio.to_thread(_keep_report, Path(f"{out}.txt"), kept)
    print(f"  operator {PROFILE} profile: {kept}", flush=True)


def _keep_report(report: Path, kept: Path) -> None:
    deadline = time.monotonic() + PROFILE_REPORT_SECONDS
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1)  # written in one go, but it may be under way
    kept.write_text(report.read_text() if report.exists() else "no profile report\n")


async def baseline_phase(bench: Bench, runs: int) -> PhaseResult:
    namespace, kubeconfig = await bench.namespace("bench-baseline")
    settings = OperatorSettings(watch_namespace=namespace)
    creates = [1]
    async with KubeClient(str(kubeconfig), request_timeout_seconds=120) as as_operator:

        async def create_children(run: dict[str, Any]) -> None:
            owner = children.RunOwner.from_body(run)
            spec = parse_spec(run)
            now = datetime.now(UTC)  # as the operator does: the run's wall clock starts at acceptance
            objects = children.build_children(
                owner,
                spec,
                settings,
                stream_token=secrets.token_urlsafe(32),
                permit_key=secrets.token_urlsafe(32),
                deadline=compute_budget(spec).deadline_from(now),
                now=now,
            )
            creates[0] = 1 + len(objects)
            for obj in objects:
                api, plural = CHILD_RESOURCES[obj["kind"]]
                await as_operator.create(namespaced_path(api, plural, namespace), obj)

        pids = (bench.component_pid("kube-apiserver"), bench.component_pid("etcd"))
        latencies, total, cpu = await create_and_time(bench, namespace, "baseline", runs, create_children, pids)
    return PhaseResult(latencies, total, cpu[0], cpu[1], creates_per_run=creates[0])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


async def main(run_counts: list[int], concurrency: int, wait_seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="reconcile-scale-") as name:
        state_dir = Path(name)
        testbed = KubeTestbed(state_dir / "testbed")
        await asyncio.to_thread(testbed.start)
        try:
            print(f"on Kubernetes {testbed.version} (the real control plane; both phases on the same API server)")
            bench = Bench(testbed, state_dir, concurrency, wait_seconds)
            for runs in run_counts:
                await measure(bench, runs)
        finally:
            await asyncio.to_thread(testbed.stop)


def print_operator(operator: PhaseResult, runs: int) -> None:
    """The operator phase's own figures: its CPU and its memory with every run live."""
    print(f"  {'operator CPU (s)':<28}{operator.operator_cpu_seconds:>12.1f}")
    # Per live run: the growth from the warm-up run's (code paths and connections in use once) to all runs';
    # from idle, those first-use costs are spread over the runs too.
    per_run_kib = (operator.operator_rss_mib - operator.operator_warm_rss_mib) * 1024 / runs
    from_idle_kib = (operator.operator_rss_mib - operator.operator_idle_rss_mib) * 1024 / (runs + 1)
    print(
        f"  operator RSS: {operator.operator_idle_rss_mib:.0f} MiB idle, {operator.operator_warm_rss_mib:.0f} MiB"
        f" with the warm-up run, {operator.operator_rss_mib:.0f} MiB with {runs + 1} live runs:"
        f" {per_run_kib:.1f} KiB per live run ({from_idle_kib:.1f} KiB per run counted from idle)",
        flush=True,
    )


async def measure(bench: Bench, runs: int) -> None:
    print(f"{runs} AgentRuns, {bench.concurrency} creates in flight", flush=True)
    operator = await operator_phase(bench, runs)
    print(f"  operator: all Jobs exist after {operator.total_seconds:.1f} s", flush=True)
    print_operator(operator, runs)
    if not PROFILE:  # a profiled operator's times compare with nothing
        baseline = await baseline_phase(bench, runs)
        print(
            f"  baseline: the AgentRun and the operator's {baseline.creates_per_run - 1} children of each run, created"
        )
        print(f"  {'':<28}{'operator':>12}{'baseline':>12}{'ratio':>8}")
        for label, fraction in (("create -> Job p50", 0.5), ("create -> Job p99", 0.99)):
            mine, bare = operator.percentile(fraction), baseline.percentile(fraction)
            print(f"  {label:<28}{ms(mine):>12}{ms(bare):>12}{mine / bare:>7.1f}x")
        ratio = operator.total_seconds / baseline.total_seconds
        print(
            f"  {'all Jobs exist after':<28}{operator.total_seconds:>10.1f} s"
            f"{baseline.total_seconds:>10.1f} s{ratio:>7.2f}x"
        )
        print(
            f"  {'throughput (runs/s)':<28}{runs / operator.total_seconds:>12.1f}{runs / baseline.total_seconds:>12.1f}"
        )
        print(
            f"  {'API server CPU (s)':<28}{operator.apiserver_cpu_seconds:>12.1f}"
            f"{baseline.apiserver_cpu_seconds:>12.1f}"
        )
        print(f"  {'etcd CPU (s)':<28}{operator.etcd_cpu_seconds:>12.1f}{baseline.etcd_cpu_seconds:>12.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--concurrency", type=int, default=16, help="creates in flight")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for all Jobs, per phase")
    parser.add_argument("--operator-log", default="", help="keep the operator's log in this file")
    parser.add_argument(
        "--profile",
        choices=("cpu", "memory", "census"),
        help="profile the operator (cProfile, tracemalloc, or a count of live objects), report by the log",
    )
    parser.add_argument("--quick", action="store_true", help="50 runs: a smoke test of the benchmark")
    arguments = parser.parse_args()
    counts = [50] if arguments.quick else arguments.runs
    asyncio.run(main(counts, arguments.concurrency, arguments.timeout))
