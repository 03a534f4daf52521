"""Reconcile latency, throughput and operator memory at scale, against the bare API calls.

    python bench/reconcile_scale.py [--runs 1000 5000] [--concurrency 16] [--quick]

For each run count N, two phases, each against a fresh emulated API server in its own process
(``python -m tests.harness.apiserver``, admission with CEL on), so the server's CPU is not shared
with the client that measures:

* operator: the real operator as a subprocess (``python -m agentrun_operator``, product intervals)
  reconciles N AgentRuns created by this script; a watch on Jobs stamps when each run's Job exists.
* baseline: this script creates the same N AgentRuns and, as soon as each is stored, the Job the
  operator would have made (the operator's own Job from the first phase, renamed), with the same
  client and the same concurrency. This is the API server's own limit for "AgentRun in, Job out".

The baseline creates the AgentRuns too because their admission (CEL, tens of ms each) is most of
the server's work: leaving it out would compare the operator against a cheaper workload.
No executor runs: a run counts as reconciled when its Job exists. Prints p50/p99 latency from
AgentRun stored to Job stored, the total time until all Jobs exist, the ratio operator/baseline,
and the operator's resident memory with N live runs (and its growth per run).
"""

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), *(str(ROOT / part) for part in ("api", "operator", "runner_image"))]

from tests.harness.local_cluster import OperatorProcess  # noqa: E402
from tests.harness.nodeagent.kube import ApiError, KubeClient, namespaced_path  # noqa: E402
from tests.harness.procstat import cpu_seconds, rss_mib  # noqa: E402

NAMESPACE = "bench"
AGENTRUNS = namespaced_path("agentrun.dev/v1alpha1", "agentruns", NAMESPACE)
JOBS = namespaced_path("batch/v1", "jobs", NAMESPACE)
SHOW_REQUESTS = "--show-requests" in sys.argv  # print the API server's request table after each phase
# --operator-log PATH: keep the operator's log of the last phase there, to see where a run waited.
OPERATOR_LOG = sys.argv[sys.argv.index("--operator-log") + 1] if "--operator-log" in sys.argv else ""
SOURCE_PATH = os.pathsep.join(str(ROOT / part) for part in ("api", "operator", "runner_image", "."))


@dataclass
class PhaseResult:
    latencies: list[float]  # seconds from AgentRun stored to Job stored, one per run
    total_seconds: float  # first create sent to last Job stored
    apiserver_cpu_seconds: float = 0.0
    operator_cpu_seconds: float = 0.0
    operator_rss_mib: float = 0.0
    operator_idle_rss_mib: float = 0.0

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def agent_run(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "instructions": "Benchmark run.",
            "input": f"Measure the operator ({name}).",  # specs differ, as real runs do
            "model": {"name": "bench", "apiKeySecretRef": {"name": "model-key", "key": "api-key"}},
            "maxExecutionTime": "1h",
            "maxIterations": 50,
        },
    }


@contextlib.asynccontextmanager
async def apiserver_process(workdir: Path) -> AsyncIterator[tuple[Path, int]]:
    """The emulated API server in its own process; yields its kubeconfig once it serves."""
    kubeconfig = workdir / "kubeconfig.yaml"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.harness.apiserver",
        "--port",
        "0",
        "--kubeconfig",
        str(kubeconfig),
        "--namespace",
        NAMESPACE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": SOURCE_PATH},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        await asyncio.wait_for(process.stdout.readline(), 30)  # the URL: it serves
        await asyncio.wait_for(process.stdout.readline(), 5)  # the kubeconfig line: it is written
        async with KubeClient(str(kubeconfig), request_timeout_seconds=120) as kube:
            secret = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "model-key", "namespace": NAMESPACE},
                "stringData": {"api-key": "bench-key"},
            }
            await kube.create(namespaced_path("v1", "secrets", NAMESPACE), secret)
        yield kubeconfig, process.pid
    finally:
        process.terminate()
        assert process.stdout is not None
        with contextlib.suppress(TimeoutError):
            summary = await asyncio.wait_for(process.stdout.read(), 30)  # requests by kind and verb, at exit
            if SHOW_REQUESTS:
                print(summary.decode(), flush=True)
        if process.returncode is None:
            process.kill()
        await process.wait()


async def create_all(kube: KubeClient, names: list[str], concurrency: int, stored: dict[str, float], job: Any) -> None:
    """Create the AgentRuns (and, with `job`, each run's Job right after it), `concurrency` at a time."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for name in names:
        queue.put_nowait(name)

    async def worker() -> None:
        while not queue.empty():
            name = queue.get_nowait()
            await kube.create(AGENTRUNS, agent_run(name))
            stored[name] = time.monotonic()
            if job is not None:
                await job(name)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def watch_jobs(kube: KubeClient, seen: dict[str, float], expected: int, done: asyncio.Event) -> None:
    """Stamp the arrival of every run's Job (label agentrun.dev/run), until `expected` are seen."""
    while len(seen) < expected:
        with contextlib.suppress(ApiError, OSError, asyncio.TimeoutError):
            async for event in kube.watch(JOBS):
                if event.get("type") == "ADDED":
                    run = event["object"]["metadata"].get("labels", {}).get("agentrun.dev/run")
                    if run:
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
    kube: KubeClient, label: str, runs: int, concurrency: int, wait_seconds: float, job: Any, pids: tuple[int, ...]
) -> tuple[list[float], float, list[float]]:
    """Create `runs` AgentRuns (with `job`, each run's Job too) and wait until every run's Job exists.

    Returns the seconds from AgentRun stored to Job stored of each run, the seconds from the first
    create to the last Job, and the CPU seconds each process in `pids` spent meanwhile.
    """
    names = [f"run-{index:05d}" for index in range(runs)]
    stored: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = asyncio.Event()
    watcher = asyncio.create_task(watch_jobs(kube, seen, runs, done))
    reporter = asyncio.create_task(progress(label, seen, runs, done))
    await asyncio.sleep(0.5)  # the watch is open before the first create
    started = time.monotonic()
    cpu_before = [cpu_seconds(pid) for pid in pids]
    await create_all(kube, names, concurrency, stored, job)
    try:
        await asyncio.wait_for(done.wait(), wait_seconds)
    finally:
        watcher.cancel()
        reporter.cancel()
    total = max(seen.values()) - started
    cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True)]
    return [seen[name] - stored[name] for name in names], total, cpu


async def operator_phase(runs: int, concurrency: int, wait_seconds: float) -> tuple[PhaseResult, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as name:
        workdir = Path(name)
        async with apiserver_process(workdir) as (kubeconfig, apiserver_pid):
            env = {
                **os.environ,
                "PYTHONPATH": SOURCE_PATH,
                "KUBECONFIG": str(kubeconfig),
                "AGENTRUN_WATCH_NAMESPACE": NAMESPACE,
                "AGENTRUN_LOG_FORMAT": "json",
            }
            operator = OperatorProcess(env, workdir / "operator.log", startup_timeout_seconds=60)
            await operator.start()
            try:
                assert operator.process is not None
                await asyncio.sleep(1)
                idle = rss_mib(operator.process.pid)
                async with KubeClient(str(kubeconfig), request_timeout_seconds=120) as kube:
                    latencies, total, cpu = await create_and_time(
                        kube, "operator", runs, concurrency, wait_seconds, None, (apiserver_pid, operator.process.pid)
                    )
                    await asyncio.sleep(2)  # supervisors settle; memory with every run live
                    rss = rss_mib(operator.process.pid)
                    template = (await kube.list(JOBS))[0]
            finally:
                await operator.stop()
                if OPERATOR_LOG:
                    await asyncio.to_thread(Path(OPERATOR_LOG).write_text, operator.log())
    return PhaseResult(latencies, total, cpu[0], cpu[1], rss, idle), template


def job_factory(kube: KubeClient, template: dict[str, Any]) -> Any:
    """Create `<run>-runner` from the operator's own Job, renamed and relabelled for `run`."""
    source_run = template["metadata"]["labels"]["agentrun.dev/run"]

    async def create(run: str) -> None:
        text = json.dumps({"metadata": template["metadata"], "spec": template["spec"]}).replace(source_run, run)
        renamed = json.loads(text)  # a fresh copy: the template is never changed
        metadata = renamed["metadata"]
        for key in ("uid", "resourceVersion", "creationTimestamp", "generation", "ownerReferences", "managedFields"):
            metadata.pop(key, None)
        spec = renamed["spec"]
        spec.pop("selector", None)
        spec["template"]["metadata"].get("labels", {}).pop("controller-uid", None)
        spec["template"]["metadata"].get("labels", {}).pop("batch.kubernetes.io/controller-uid", None)
        await kube.create(JOBS, {"apiVersion": "batch/v1", "kind": "Job", **renamed})

    return create


async def baseline_phase(runs: int, concurrency: int, template: dict[str, Any], wait_seconds: float) -> PhaseResult:
    with tempfile.TemporaryDirectory() as name:
        async with (
            apiserver_process(Path(name)) as (kubeconfig, apiserver_pid),
            KubeClient(str(kubeconfig), request_timeout_seconds=120) as kube,
        ):
            job = job_factory(kube, template)
            latencies, total, cpu = await create_and_time(
                kube, "baseline", runs, concurrency, wait_seconds, job, (apiserver_pid,)
            )
    return PhaseResult(latencies, total, cpu[0])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


async def main(run_counts: list[int], concurrency: int, wait_seconds: float) -> None:
    for runs in run_counts:
        print(f"{runs} AgentRuns, {concurrency} creates in flight", flush=True)
        operator, template = await operator_phase(runs, concurrency, wait_seconds)
        baseline = await baseline_phase(runs, concurrency, template, wait_seconds)
        growth_kib = (operator.operator_rss_mib - operator.operator_idle_rss_mib) * 1024 / runs
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
            f"  {'API server CPU (s)':<28}{operator.apiserver_cpu_seconds:>12.1f}{baseline.apiserver_cpu_seconds:>12.1f}"
        )
        print(f"  {'operator CPU (s)':<28}{operator.operator_cpu_seconds:>12.1f}")
        print(
            f"  operator RSS: {operator.operator_idle_rss_mib:.0f} MiB idle, {operator.operator_rss_mib:.0f} MiB"
            f" with {runs} live runs ({growth_kib:.1f} KiB per run)",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--concurrency", type=int, default=16, help="creates in flight")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for all Jobs, per phase")
    parser.add_argument("--show-requests", action="store_true", help="print the API requests of each phase")
    parser.add_argument("--operator-log", default="", help="keep the operator's log in this file")
    parser.add_argument("--quick", action="store_true", help="20 runs: a smoke test of the benchmark")
    arguments = parser.parse_args()
    counts = [20] if arguments.quick else arguments.runs
    asyncio.run(main(counts, arguments.concurrency, arguments.timeout))
