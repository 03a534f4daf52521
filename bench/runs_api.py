"""The runs API's front door under load: 202 latency with 50 concurrent submitters, and duplicate runs under
client retries (must be zero).

Starts a real control plane (tests.harness.testbed), an AgentRunTemplate and an API key in a namespace of its
own, and the stream gateway as its own process (`python -m agentrun_gateway`) reaching the API server as its
ServiceAccount with the chart's rules. No operator: the runs are created and stay Pending; what is measured is
the door, from the request to the 202 that follows the API server's write.

1. Latency: SUBMITTERS concurrent clients each submit RUNS runs one after another (each with its own
   Idempotency-Key), twice, alternated with the same number of AgentRun creates sent by the same concurrency
   straight to the API server (the floor under the door). Prints p50/p99/max of the 202s and of the creates.
2. Retries: SUBMITTERS clients each submit one run with its own key and retry it RETRIES more times, every
   other attempt with a client timeout short enough that it gives up before the answer arrives (the answer is
   lost, as behind a 504); then counts the AgentRuns: duplicates = runs - keys.

    python bench/runs_api.py [--submitters 50] [--runs 10] [--retries 5] [--quick]
"""

import argparse
import asyncio
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

BENCH_FILE = Path(__file__).resolve()
ROOT = BENCH_FILE.parents[1]
SOURCE_PATHS = [str(ROOT), *(str(ROOT / part) for part in ("api", "common", "operator", "runner_image", "gateway"))]
sys.path[:0] = SOURCE_PATHS

from tests.harness.gateway import gateway_endpoint, gateway_process  # noqa: E402
from tests.harness.identities import SYSTEM_NAMESPACE  # noqa: E402
from tests.harness.runs_api import RunsApi, agent_runs, create_template  # noqa: E402
from tests.harness.testbed import KubeTestbed  # noqa: E402

from agentrun_api.contract import STREAM_PORT  # noqa: E402

RUN = {
    "instructions": "You are a careful research assistant.",
    "model": {"name": "gpt-4.1-mini", "baseURL": "http://127.0.0.1:9/v1"},
    "maxExecutionTime": "5m",
    "maxIterations": 5,
}


ROUNDS = 2  # of RUNS per submitter each, door and API server alternated


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def submit_latencies(
    base_url: str, key: str, namespace: str, submitters: int, runs: int, round_: int
) -> list[float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=submitters)
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30, limits=limits
    ) as client:

        async def submitter(number: int) -> None:
            for run in range(runs):
                started = time.perf_counter()
                answer = await client.post(
                    f"/v1/namespaces/{namespace}/runs",
                    json={"template": "research", "input": f"Task {number}.{run}"},
                    headers={"Idempotency-Key": f"latency-{round_}-{number}-{run}"},
                )
                latencies.append(time.perf_counter() - started)
                assert answer.status_code == 202, answer.text

        await asyncio.gather(*(submitter(n) for n in range(submitters)))
    return latencies


async def direct_latencies(
    testbed: KubeTestbed, namespace: str, submitters: int, runs: int, round_: int
) -> list[float]:
    """The same creates straight to the API server, as an admin: the floor under the door's latency."""
    control_plane = testbed.control_plane
    latencies: list[float] = []
    context = ssl.create_default_context(cafile=str(control_plane.ca_file))
    context.load_cert_chain(str(control_plane.admin_credentials.cert), str(control_plane.admin_credentials.key))
    async with httpx.AsyncClient(
        base_url=control_plane.url,
        verify=context,
        timeout=30,
        limits=httpx.Limits(max_connections=submitters),
    ) as client:

        async def submitter(number: int) -> None:
            for run in range(runs):
                body = {
                    "apiVersion": "agentrun.dev/v1alpha1",
                    "kind": "AgentRun",
                    "metadata": {"name": f"direct-{round_}-{number}-{run}"},
                    "spec": {**RUN, "input": f"Task {number}.{run}"},
                }
                started = time.perf_counter()
                answer = await client.post(f"/apis/agentrun.dev/v1alpha1/namespaces/{namespace}/agentruns", json=body)
                latencies.append(time.perf_counter() - started)
                assert answer.status_code == 201, answer.text

        await asyncio.gather(*(submitter(n) for n in range(submitters)))
    return latencies


async def retried_submissions(base_url: str, key: str, namespace: str, submitters: int, retries: int) -> int:
    """Submit with retries, half of them cut before the answer; the number of 202s received."""
    accepted = 0

    async def submitter(number: int) -> None:
        nonlocal accepted
        request = {"template": "research", "input": f"Retried task {number}."}
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"retried-{number}"}
        for attempt in range(retries + 1):
            timeout = 0.002 if attempt % 2 == 0 and attempt < retries else 30.0  # the last attempt waits
            try:
                async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as client:
                    answer = await client.post(f"/v1/namespaces/{namespace}/runs", json=request, headers=headers)
                assert answer.status_code == 202, answer.text
                accepted += 1
            except httpx.TimeoutException:
                pass  # the client gave up; the request may or may not have reached the API server

    await asyncio.gather(*(submitter(n) for n in range(submitters)))
    return accepted


async def main(submitters: int, runs: int, retries: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="runs-api-") as directory:
        testbed = KubeTestbed(Path(directory) / "testbed")
        await asyncio.to_thread(testbed.start)
        try:
            print(f"on Kubernetes {testbed.version} (the real control plane; the gateway as its ServiceAccount)")
            namespace = await asyncio.to_thread(testbed.create_namespace, "runs-api-bench")
            direct_namespace = await asyncio.to_thread(testbed.create_namespace, "runs-api-direct")
            create_template(testbed, namespace, "research", RUN, [])
            api = gateway_endpoint(testbed, namespace, Path(directory))
            os.environ.update(
                {
                    "AGENTRUN_GATEWAY_RUNS_API_API_KEYS_NAMESPACE": SYSTEM_NAMESPACE,
                    "AGENTRUN_GATEWAY_RUNS_API_RUNS_PER_MINUTE_PER_CALLER": "1000000",
                    "AGENTRUN_GATEWAY_RUNS_API_BURST_RUNS_PER_CALLER": "1000000",
                }
            )
            async with gateway_process(api, STREAM_PORT, stderr=None) as (_, port):
                base_url = f"http://127.0.0.1:{port}"
                key = RunsApi(base_url, testbed).new_api_key(namespace)
                door: list[float] = []
                floor: list[float] = []
                # Alternated rounds, so a change in the machine's other load falls on both sides alike.
                for round_ in range(ROUNDS):
                    door += await submit_latencies(base_url, key, namespace, submitters, runs, round_)
                    floor += await direct_latencies(testbed, direct_namespace, submitters, runs, round_)
                before = len(agent_runs(testbed, namespace))
                accepted = await retried_submissions(base_url, key, namespace, submitters, retries)
                made = len(agent_runs(testbed, namespace)) - before
        finally:
            await asyncio.to_thread(testbed.stop)
    figures = {
        "submitters": submitters,
        "submissions": len(door),
        "accepted_202_p50_ms": round(statistics.median(door) * 1000, 1),
        "accepted_202_p99_ms": round(percentile(door, 0.99) * 1000, 1),
        "accepted_202_max_ms": round(max(door) * 1000, 1),
        "api_server_create_p50_ms": round(statistics.median(floor) * 1000, 1),
        "api_server_create_p99_ms": round(percentile(floor, 0.99) * 1000, 1),
        "retried_keys": submitters,
        "attempts_per_key": retries + 1,
        "answers_received": accepted,
        "runs_created_for_retried_keys": made,
        "duplicates": made - submitters,
    }
    print(
        f"202 latency, {submitters} concurrent submitters, {len(door)} submissions: "
        f"p50 {figures['accepted_202_p50_ms']} ms, p99 {figures['accepted_202_p99_ms']} ms, "
        f"max {figures['accepted_202_max_ms']} ms"
    )
    print(
        f"API server create alone, same concurrency: p50 {figures['api_server_create_p50_ms']} ms, "
        f"p99 {figures['api_server_create_p99_ms']} ms"
    )
    print(
        f"client retries: {submitters} keys x {retries + 1} attempts (every other one cut before its answer), "
        f"{made} runs created, duplicates: {figures['duplicates']}"
    )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submitters", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5, help="runs each submitter submits per round, one after another")
    parser.add_argument("--retries", type=int, default=5, help="retries of each retried submission")
    parser.add_argument(
        "--quick", action="store_true", help="10 submitters, 1 run each per round, 3 retries: a smoke test"
    )
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.submitters, arguments.runs, arguments.retries = 10, 1, 3
    asyncio.run(main(arguments.submitters, arguments.runs, arguments.retries))
