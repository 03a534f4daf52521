"""Runner overhead and checkpoint write sizes over a long run.

    python bench/runner_overhead.py [--iterations 500]

Runs the real runner loop (in this process) against the scripted model server, which answers at
once with one tool call per turn. Reports:
  * the runner's time per iteration around iterations 10, 100 and 500 (mean of the 10 iterations
    up to each): from one model request's arrival at the server to the next one's, minus the
    server's own time on the first (reading and parsing the request, answering: the model's
    latency), so what is left is the runner's work (HTTP and the openai SDK included); and the
    CPU time this process used in the same span (steadier than wall time on a shared machine);
  * bytes of each checkpoint write around those iterations, for the PVC store (frame sizes in the
    log file) and the ConfigMap store (merge-patch bodies sent over HTTPS to a real kube-apiserver:
    a control plane started for the benchmark (tests.harness.testbed), the run's AgentRun and the
    runner's ServiceAccount, Role and RoleBinding as the operator makes them, and the runner using a
    real token of that ServiceAccount). Flat numbers mean writes are proportional to what is new, not
    to history.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "api"), str(ROOT / "common"), str(ROOT / "runner_image"), str(ROOT)]

from tests.harness.model_server import Answer, ModelServer, by_turn, call  # noqa: E402
from tests.harness.run_identity import provision_run  # noqa: E402
from tests.harness.runner import API_KEY, make_config, make_spec  # noqa: E402
from tests.harness.testbed import KubeTestbed  # noqa: E402

from agentrun_api import contract  # noqa: E402
from agentrun_api.contract import RunnerConfig  # noqa: E402
from agentrun_api.spec import AgentRunSpec  # noqa: E402
from agentrun_common.eventlog.records import CorruptRecordError, decode_record  # noqa: E402
from agentrun_runner import __main__ as runner_main  # noqa: E402
from agentrun_runner.kube import ConfigMaps  # noqa: E402
from agentrun_runner.settings import RunnerSettings  # noqa: E402

MARKS = (10, 100, 500)


def settings(tmp: Path) -> RunnerSettings:
    return RunnerSettings(progress_file=str(tmp / "progress.json"), sse_linger_seconds=0, stream_host="127.0.0.1")


def long_run_spec(model_url: str, iterations: int, store: str) -> AgentRunSpec:
    return make_spec(model_url, maxIterations=iterations, maxExecutionTime="2h", checkpoint={"store": store})


def long_run_config(
    spec: AgentRunSpec, tmp: Path, store: str, namespace: str = "default", uid: str = ""
) -> RunnerConfig:
    return make_config(
        spec, tmp, store=store, namespace=namespace, uid=uid or "0f0e0d0c-uid", progress_interval_seconds=2.0
    )


def window(values_by_iteration: dict[int, list[float]], mark: int) -> list[float]:
    return [v for i in range(max(mark - 9, 1), mark + 1) for v in values_by_iteration.get(i, [])]


async def pvc_run(
    model: ModelServer, iterations: int
) -> tuple[dict[int, float], dict[int, float], dict[int, list[float]]]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        store = "PersistentVolumeClaim"
        config = long_run_config(long_run_spec(model.base_url, iterations, store), tmp, store)
        model.requests.clear()
        model.handling_seconds.clear()
        model.cpu_marks.clear()
        code = await runner_main.run(config, settings(tmp))
        assert code == 0, code
        starts = [r.received_at for r in model.requests]
        handling = model.handling_seconds
        per_iteration = {i: starts[i] - starts[i - 1] - handling[i - 1] for i in range(1, len(starts))}
        cpu = model.cpu_marks
        cpu_per_iteration = {i: cpu[i][0] - cpu[i - 1][1] for i in range(1, len(starts))}
        log = (tmp / "checkpoint" / "checkpoint.log").read_bytes()
        sizes: dict[int, list[float]] = {}
        offset = 0
        while offset < len(log):
            length = int(log[offset : offset + 10])
            end = offset + 77 + length
            record = decode_record(log[offset:end])
            sizes.setdefault(record["counters"]["step"], []).append(end - offset)
            offset = end
        return per_iteration, cpu_per_iteration, sizes


async def configmap_run(model: ModelServer, iterations: int) -> dict[int, list[float]]:
    sizes: dict[int, list[float]] = {}
    step = [0]
    original = ConfigMaps.put_data

    async def measured(self: ConfigMaps, name: str, data: dict[str, str], labels: dict[str, str]) -> None:
        if "-ckpt-" in name:
            for value in data.values():
                with contextlib.suppress(CorruptRecordError, UnicodeEncodeError):  # a part of a split record
                    step[0] = decode_record(value.encode("ascii"))["counters"]["step"]
            sizes.setdefault(step[0], []).append(len(json.dumps({"data": data})))
        await original(self, name, data, labels)

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        testbed = KubeTestbed(tmp / "testbed")
        await asyncio.to_thread(testbed.start)
        try:
            print(f"ConfigMap store on Kubernetes {testbed.version} (a real control plane; the runner's own token)")
            spec = long_run_spec(model.base_url, iterations, "ConfigMap")
            namespace = await asyncio.to_thread(testbed.create_namespace, "bench-runner-overhead")
            run = await asyncio.to_thread(provision_run, testbed, namespace, spec, tmp)
            os.environ["KUBECONFIG"] = str(run.kubeconfig)
            ConfigMaps.put_data = measured  # type: ignore[method-assign]
            try:
                config = long_run_config(spec, tmp, "ConfigMap", namespace, run.uid)
                code = await runner_main.run(config, dataclasses.replace(settings(tmp), progress_file=""))
                assert code == 0, code
            finally:
                ConfigMaps.put_data = original  # type: ignore[method-assign]
                os.environ.pop("KUBECONFIG")
            answer = await asyncio.to_thread(testbed.admin.get, f"/api/v1/namespaces/{namespace}/configmaps")
            answer.raise_for_status()
            names = {item["metadata"]["name"] for item in answer.json()["items"]}
            segments = [n for n in (contract.checkpoint_segment_name("demo", i) for i in range(36)) if n in names]
        finally:
            await asyncio.to_thread(testbed.stop)
    print(f"ConfigMap store: {len(segments)} segment(s) used: {', '.join(segments)}")
    return sizes


def describe(values: list[float], unit: str, scale: float = 1.0) -> str:
    if not values:
        return "n/a"
    return (
        f"mean {statistics.mean(values) * scale:8.2f} {unit}  median {statistics.median(values) * scale:8.2f} {unit}"
        f"  max {max(values) * scale:8.2f} {unit}  (n={len(values)})"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="20 iterations: a smoke test of the benchmark")
    args = parser.parse_args()
    if args.quick:
        args.iterations = 20
    os.environ["OPENAI_API_KEY"] = API_KEY
    marks = [m for m in MARKS if m <= args.iterations]
    script = by_turn([Answer(tool_calls=[call("list_files")])])  # never a final answer: runs to maxIterations
    async with ModelServer(script) as model:
        started = time.monotonic()
        per_iteration, cpu_per_iteration, pvc_sizes = await pvc_run(model, args.iterations)
        print(f"PVC run: {args.iterations} iterations in {time.monotonic() - started:.1f}s")
        cm_sizes = await configmap_run(model, args.iterations)
    as_lists = {i: [v] for i, v in per_iteration.items()}
    print("\nrunner time per iteration, model latency excluded (HTTP + SDK + tools + checkpoints)")
    for mark in marks:
        print(f"  iterations {max(mark - 9, 1):>3}-{mark:<3}: {describe(window(as_lists, mark), 'ms', 1000)}")
    cpu_lists = {i: [v] for i, v in cpu_per_iteration.items()}
    print("\nrunner CPU time per iteration, same span (all threads of this process)")
    for mark in marks:
        print(f"  iterations {max(mark - 9, 1):>3}-{mark:<3}: {describe(window(cpu_lists, mark), 'ms', 1000)}")
    print("\nbytes per checkpoint write, PVC store (record frames appended to the log)")
    for mark in marks:
        print(f"  iterations {max(mark - 9, 1):>3}-{mark:<3}: {describe(window(pvc_sizes, mark), 'B')}")
    print("\nbytes per checkpoint write, ConfigMap store (merge-patch bodies)")
    for mark in marks:
        print(f"  iterations {max(mark - 9, 1):>3}-{mark:<3}: {describe(window(cm_sizes, mark), 'B')}")


if __name__ == "__main__":
    asyncio.run(main())
