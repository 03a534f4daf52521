"""Relay lag and memory of the stream gateway with many readers on one run, and the agent's iteration
rate with and without them.

Starts a real control plane (tests.harness.testbed: etcd, kube-apiserver, controller-manager, scheduler)
holding each run's AgentRun (phase Running) and stream-token Secret in a namespace of its own, the gateway
as its own process (`python -m agentrun_gateway`, so its memory is measured alone) reaching the API server
as its ServiceAccount (a real token in a file, the chart's rules, the server's CA), and READERS SSE readers.

1. Relay lag: a fake runner emits EVENTS events at RATE per second, each stamped with its emit time;
   every reader records when each event arrived. Prints p50/p99/max relay lag over all readers and the
   gateway's resident memory (VmRSS) before the readers connect and while all of them are connected.
2. Iteration rate: the real runner (`python -m agentrun_runner`, PVC store, its agent loop) runs
   ITERATIONS iterations against the scripted model answering at once (its own process, streaming
   a few tokens and one tool call per turn), first with no reader, then with READERS readers through
   the gateway. The model's first answer waits START_DELAY seconds, so the readers are attached before
   the measured window: the rate is iterations per second between the model's second and last
   request. Measured TRIALS times each, alternated; prints the median rates, their ratio (1.0 = the
   readers cost the agent nothing), whether every reader got exactly the runner's event log, and
   why a rate moved: the runner's own CPU time per
   iteration (all it does for readers is serve the gateway's one upstream connection) and the time
   the runner and the model waited for a CPU (/proc schedstat) per iteration: on a small shared
   machine the readers' side (gateway, readers) takes CPU from the agent's, as it would not on
   separate nodes (--split-cpus pins each side to its own CPUs; other work on the machine still
   lands on both).

    python bench/gateway_fanout.py [--readers 100] [--events 500] [--rate 100] [--iterations 300]
                                   [--trials 3] [--split-cpus]

Everything listens on 127.0.0.1; the run stops by itself (bounded by the event count and timeouts).
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

BENCH_FILE = Path(__file__).resolve()
ROOT = BENCH_FILE.parents[1]
SOURCE_PATHS = [str(ROOT), *(str(ROOT / part) for part in ("api", "common", "operator", "runner_image", "gateway"))]
sys.path[:0] = SOURCE_PATHS

from tests.harness.fake_stream_runner import FakeStreamRunner  # noqa: E402
from tests.harness.gateway import ApiEndpoint, gateway_endpoint, gateway_process, stream_token_secret  # noqa: E402
from tests.harness.identities import grant_stream_token_to_gateway  # noqa: E402
from tests.harness.local_cluster import free_port  # noqa: E402
from tests.harness.model_server import Answer, ModelServer, by_turn, call  # noqa: E402
from tests.harness.procstat import cpu_seconds, rss_mib  # noqa: E402
from tests.harness.run_identity import set_run_phase  # noqa: E402
from tests.harness.runner import STREAM_TOKEN, RunnerProcess, load_state, make_config, make_spec, runner_env  # noqa: E402
from tests.harness.testbed import KubeTestbed  # noqa: E402

from agentrun_common.sse import SseParser  # noqa: E402

TOKEN = "bench-stream-token"
RUN = "fanout"


def _runqueue_wait_seconds(pid: int) -> float:
    """Time the process's threads spent runnable but waiting for a CPU (/proc/<pid>/task/*/schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that has just ended
    return total / 1e9


def _at(samples: list[tuple[float, float]], moment: float) -> float:
    """A sampled value at ``moment``, interpolated between the samples around it."""
    before = max((s for s in samples if s[0] <= moment), default=samples[0])
    after = min((s for s in samples if s[0] >= moment), default=samples[-1])
    if after[0] == before[0]:
        return before[1]
    return before[1] + (after[1] - before[1]) * (moment - before[0]) / (after[0] - before[0])


async def _reader(session: aiohttp.ClientSession, url: str, lags: list[float], connected: list[int]) -> int:
    received = 0
    async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 200, response.status
        connected.append(1)
        parser = SseParser()
        async for chunk in response.content.iter_any():
            now = time.monotonic()
            for event in parser.feed(chunk):
                payload = json.loads(event.data)
                if "t" in payload:
                    lags.append(now - payload["t"])
                    received += 1
                if event.event == "finished":
                    return received
    return received


@dataclass
class Kube:
    """A namespace of the real control plane, and how the gateway reaches its API server: a real token of the
    gateway's ServiceAccount (granted the chart's rules in the namespace) in a file, and the server's CA."""

    testbed: KubeTestbed
    namespace: str
    api: ApiEndpoint

    @classmethod
    def create(cls, testbed: KubeTestbed, directory: Path) -> "Kube":
        namespace = testbed.create_namespace("bench-gateway-fanout")
        return cls(testbed, namespace, gateway_endpoint(testbed, namespace, directory))

    def create_run(self, name: str, token: str) -> None:
        """The AgentRun (phase Running) and its stream-token Secret, as the operator would leave them."""
        spec = {
            "instructions": "Benchmark.",
            "input": "Stream.",
            "model": {"name": "bench"},
            "maxExecutionTime": "1h",
            "maxIterations": 10,
        }
        admin = self.testbed.admin
        body = {"apiVersion": "agentrun.dev/v1alpha1", "kind": "AgentRun", "metadata": {"name": name}, "spec": spec}
        admin.post(f"/apis/agentrun.dev/v1alpha1/namespaces/{self.namespace}/agentruns", json=body).raise_for_status()
        secret = stream_token_secret(self.namespace, name, token)
        admin.post(f"/api/v1/namespaces/{self.namespace}/secrets", json=secret).raise_for_status()
        grant_stream_token_to_gateway(admin, self.namespace, name)
        set_run_phase(self.testbed, self.namespace, name, "Running")


async def relay_lag(kube: Kube, readers: int, events: int, rate: float) -> dict[str, Any]:
    await asyncio.to_thread(kube.create_run, RUN, TOKEN)
    runner = FakeStreamRunner(TOKEN, heartbeat_seconds=15)
    await runner.start()
    try:
        async with gateway_process(kube.api, runner.port, stderr=asyncio.subprocess.DEVNULL) as (gateway, port):
            pid = gateway.pid
            url = f"http://127.0.0.1:{port}/runs/{kube.namespace}/{RUN}/events"
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
                rss_idle = rss_mib(pid)
                lags: list[float] = []
                connected: list[int] = []
                tasks = [asyncio.create_task(_reader(session, url, lags, connected)) for _ in range(readers)]
                await runner.emit("iteration", {"warmup": True})
                for _ in range(600):  # wait up to 30 s for every reader to be connected
                    if len(connected) >= readers:
                        break
                    await asyncio.sleep(0.05)
                rss_peak = 0.0
                for index in range(events):
                    await runner.emit("token", {"n": index, "t": time.monotonic()})
                    if index % 50 == 0:
                        rss_peak = max(rss_peak, rss_mib(pid))
                    await asyncio.sleep(1 / rate)
                rss_peak = max(rss_peak, rss_mib(pid))
                await runner.emit("finished", {"phase": "Succeeded"})
                counts = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    finally:
        await runner.kill()
    lags.sort()
    return {
        "readers": readers,
        "events": events,
        "rate_per_second": rate,
        "every_reader_got_every_event": all(count == events for count in counts),
        "upstream_connections": runner.connections,
        "lag_ms_p50": round(statistics.median(lags) * 1000, 2),
        "lag_ms_p99": round(lags[int(len(lags) * 0.99) - 1] * 1000, 2),
        "lag_ms_max": round(lags[-1] * 1000, 2),
        "gateway_rss_mib_idle": round(rss_idle, 1),
        "gateway_rss_mib_with_readers": round(rss_peak, 1),
    }


# --- the real runner's iteration rate, without and with readers ---------------------------------------------


def serve_model(port: int, start_delay: float, times_file: str) -> None:
    """The scripted model in its own process (so the readers' work in this one never slows its answers):
    every turn a few words and one tool call, at once, except the first, which waits ``start_delay``.
    On SIGTERM it writes the arrival time (CLOCK_MONOTONIC, shared by every process) of each request."""
    import signal

    words = "Checking the workspace once more before the next step."

    async def serve() -> list[float]:
        script = by_turn(
            [Answer(content=words, tool_calls=[call("list_files")], delay=start_delay)],
            then=Answer(content=words, tool_calls=[call("list_files")]),
        )
        async with ModelServer(script, port=port) as model:
            print("ready", flush=True)
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            await stop.wait()
            return [r.received_at for r in model.requests]

    Path(times_file).write_text(json.dumps(asyncio.run(serve())))


async def _id_reader(session: aiohttp.ClientSession, url: str, connected: list[float]) -> list[int]:
    """Every event id the reader receives, until ``finished``."""
    ids: list[int] = []
    async with session.get(url, headers={"Authorization": f"Bearer {STREAM_TOKEN}"}) as response:
        assert response.status == 200, response.status
        connected.append(time.monotonic())
        parser = SseParser()
        async for chunk in response.content.iter_any():
            for event in parser.feed(chunk):
                ids += [event.sequence] if event.sequence is not None else []
                if event.event == "finished":
                    return ids
    return ids


def _pin(pid: int, cpus: set[int] | None) -> None:
    if cpus is not None:
        os.sched_setaffinity(pid, cpus)


async def runner_rate(
    kube: Kube,
    readers: int,
    iterations: int,
    start_delay: float,
    split: tuple[set[int], set[int]] | None,
    name: str,
) -> dict[str, Any]:
    """Iterations per second of the real runner with ``readers`` readers through the gateway (0: none).
    ``split``: CPUs for the agent's side (runner, model) and for the readers' side (gateway, readers), as
    if they ran on different nodes; None shares every CPU."""
    agent_cpus, reader_cpus = split if split is not None else (None, None)
    await asyncio.to_thread(kube.create_run, name, STREAM_TOKEN)
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        model_port, stream_port = free_port(), free_port()
        times_file = tmp / "model-requests.json"
        model = await asyncio.create_subprocess_exec(
            sys.executable,
            str(BENCH_FILE),
            "--serve-model",
            f"{model_port},{start_delay},{times_file}",
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(SOURCE_PATHS)},
        )
        assert model.stdout is not None
        _pin(model.pid, agent_cpus)
        await asyncio.wait_for(model.stdout.readline(), 30)
        spec = make_spec(
            f"http://127.0.0.1:{model_port}/v1",
            model={"stream": True},
            maxIterations=iterations,
            maxExecutionTime="1h",
            streaming={"enabled": True, "heartbeatInterval": "15s"},
        )
        config = make_config(spec, tmp, name=name, stream_port=stream_port, progress_interval_seconds=2.0)
        runner = await RunnerProcess(runner_env(tmp, config)).start()
        assert runner.process is not None
        _pin(runner.process.pid, agent_cpus)
        rss_peak = 0.0
        # (time, seconds): the runner's CPU time, and the runner's and the model's waits for a CPU.
        runner_cpu: list[tuple[float, float]] = []
        agent_waits: list[tuple[float, float]] = []
        gateway_cpu: list[tuple[float, float]] = []
        try:
            async with gateway_process(kube.api, stream_port, stderr=asyncio.subprocess.DEVNULL) as (gateway, port):
                pid = gateway.pid
                _pin(pid, reader_cpus)
                await runner.stream_port()
                url = f"http://127.0.0.1:{port}/runs/{kube.namespace}/{name}/events"
                connected: list[float] = []
                connector = aiohttp.TCPConnector(limit=0)
                async with aiohttp.ClientSession(
                    connector=connector, timeout=aiohttp.ClientTimeout(total=300)
                ) as session:
                    tasks = [asyncio.create_task(_id_reader(session, url, connected)) for _ in range(readers)]
                    while runner.process.returncode is None:
                        try:
                            now = time.monotonic()
                            runner_cpu.append((now, cpu_seconds(runner.process.pid)))
                            wait = _runqueue_wait_seconds(runner.process.pid) + _runqueue_wait_seconds(model.pid)
                            agent_waits.append((now, wait))
                            gateway_cpu.append((now, cpu_seconds(pid)))
                        except (FileNotFoundError, ProcessLookupError):
                            break  # it has just exited
                        rss_peak = max(rss_peak, rss_mib(pid))
                        await asyncio.sleep(0.1)
                    received = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            code = await runner.wait(timeout=60)
            assert code == 0, runner.output
        finally:
            await runner.close()
            model.terminate()
            await model.wait()
        times = json.loads(times_file.read_text())
        log = [event.id for event in (await load_state(config)).events]
    # The window: from the model's second request (the first answer waited for the readers) to its last.
    window_iterations = len(times) - 2
    rate = window_iterations / (times[-1] - times[1])
    # The runner's own CPU per iteration over the same window: what the readers could add to its work.
    cpu = (_at(runner_cpu, times[-1]) - _at(runner_cpu, times[1])) / window_iterations
    # Time the agent's side was ready to run but the machine gave its CPU to something else.
    waited = (_at(agent_waits, times[-1]) - _at(agent_waits, times[1])) / window_iterations
    relayed = (_at(gateway_cpu, times[-1]) - _at(gateway_cpu, times[1])) / (times[-1] - times[1])
    return {
        "gateway_cpu_share": round(relayed, 2),
        "iterations_per_second": round(rate, 1),
        "runner_cpu_ms_per_iteration": round(cpu * 1000, 2),
        "agent_cpu_wait_ms_per_iteration": round(waited * 1000, 2),
        "readers_attached_before_window": len(connected) == readers and (not connected or max(connected) < times[1]),
        "every_reader_got_the_runners_log": all(ids == log for ids in received),
        "events": len(log),
        "gateway_rss_mib": round(rss_peak, 1),
    }


async def main(
    readers: int, events: int, rate: float, iterations: int, start_delay: float, trials: int, split_cpus: bool
) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    split = ({cpus[0]}, set(cpus[1:])) if split_cpus and len(cpus) > 1 else None
    if split is not None:  # this process runs the readers: the readers' side
        os.sched_setaffinity(0, split[1])
    alone: list[dict[str, Any]] = []
    watched: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gateway-fanout-") as directory:
        testbed = KubeTestbed(Path(directory) / "testbed")
        await asyncio.to_thread(testbed.start)
        try:
            version = testbed.version
            print(f"on Kubernetes {version} (the real control plane; the gateway as its ServiceAccount)", flush=True)
            kube = await asyncio.to_thread(Kube.create, testbed, Path(directory))
            figures = {"kubernetes_version": version, **await relay_lag(kube, readers, events, rate)}
            # Alternated, so a change in the machine's other load falls on both sides alike.
            for trial in range(trials):
                alone.append(await runner_rate(kube, 0, iterations, start_delay, split, f"alone-{trial}"))
                watched.append(await runner_rate(kube, readers, iterations, start_delay, split, f"watched-{trial}"))
        finally:
            await asyncio.to_thread(testbed.stop)

    def median(results: list[dict[str, Any]], key: str) -> float:
        return round(statistics.median(result[key] for result in results), 2)

    rate_alone, rate_watched = median(alone, "iterations_per_second"), median(watched, "iterations_per_second")
    figures.update(
        {
            "runner_iterations": iterations,
            "runner_trials": trials,
            "runner_cpus": "runner and model on CPU {}, gateway and readers on CPUs {}".format(
                *(sorted(side) for side in split)
            )
            if split is not None
            else "shared",
            "runner_events": watched[0]["events"],
            "runner_iterations_per_second_0_readers": rate_alone,
            f"runner_iterations_per_second_{readers}_readers": rate_watched,
            "runner_rate_ratio": round(rate_watched / rate_alone, 3),
            "runner_rates_per_trial_0_readers": [result["iterations_per_second"] for result in alone],
            f"runner_rates_per_trial_{readers}_readers": [result["iterations_per_second"] for result in watched],
            "runner_cpu_ms_per_iteration_0_readers": median(alone, "runner_cpu_ms_per_iteration"),
            f"runner_cpu_ms_per_iteration_{readers}_readers": median(watched, "runner_cpu_ms_per_iteration"),
            "agent_cpu_wait_ms_per_iteration_0_readers": median(alone, "agent_cpu_wait_ms_per_iteration"),
            f"agent_cpu_wait_ms_per_iteration_{readers}_readers": median(watched, "agent_cpu_wait_ms_per_iteration"),
            "runner_readers_attached_before_window": all(r["readers_attached_before_window"] for r in watched),
            "runner_every_reader_got_the_runners_log": all(r["every_reader_got_the_runners_log"] for r in watched),
            "gateway_rss_mib_with_readers_real_runner": max(r["gateway_rss_mib"] for r in watched),
            # CPU seconds per second the gateway used while relaying (1.0 = one whole CPU).
            f"gateway_cpu_share_{readers}_readers": median(watched, "gateway_cpu_share"),
        }
    )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=100)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0, help="events per second")
    parser.add_argument("--iterations", type=int, default=300, help="iterations of the real runner, per measurement")
    parser.add_argument(
        "--start-delay", type=float, default=4.0, help="seconds the model's first answer waits, for readers to attach"
    )
    parser.add_argument(
        "--trials", type=int, default=3, help="measurements of each side, alternated; medians are reported"
    )
    parser.add_argument(
        "--split-cpus",
        action="store_true",
        help="give the agent's side (runner, model) one CPU and the readers' side (gateway, readers) the others, "
        "as if on separate nodes; by default every process shares every CPU",
    )
    parser.add_argument(
        "--quick", action="store_true", help="5 readers, 20 events, 30 iterations, 1 trial: a smoke test"
    )
    parser.add_argument("--serve-model", help=argparse.SUPPRESS)  # PORT,START_DELAY,TIMES_FILE: internal
    arguments = parser.parse_args()
    if arguments.serve_model:
        model_port, delay, times = arguments.serve_model.split(",", 2)
        serve_model(int(model_port), float(delay), times)
        sys.exit(0)
    if arguments.quick:
        arguments.readers, arguments.events, arguments.iterations, arguments.start_delay = 5, 20, 30, 1.5
        arguments.trials = 1
    figures = asyncio.run(
        main(
            arguments.readers,
            arguments.events,
            arguments.rate,
            arguments.iterations,
            arguments.start_delay,
            arguments.trials,
            arguments.split_cpus,
        )
    )
    print(json.dumps(figures, indent=2))
