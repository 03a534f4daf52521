"""Count the API requests the operator makes over one run's whole life, by kind and verb.

Starts a real control plane (etcd, kube-apiserver, controller-manager, scheduler: tests.harness.testbed),
runs the real operator in-process with its ServiceAccount token through the API proxy that counts its
requests (tests.harness.apiproxy), and plays the kubelet and the runner: a pod that
reports progress (with a checkpoint) every --report-every seconds for --iterations iterations, then
succeeds; then the run is deleted. Time is scaled down: the defaults keep production's ratio of the
runner's report interval to the operator's status interval (2 s : 2 s) at a tenth of the time.

    python bench/operator_api_requests.py --iterations 50 --report-every 0.2 --min-interval 0.2
"""

import argparse
import asyncio
import dataclasses
import logging
import tempfile
import time
from pathlib import Path

from tests.harness.apiproxy import ApiProxy
from tests.harness.inprocess_operator import FAST, Cluster, RunPace, running_operator, simulate_run_life
from tests.harness.testbed import KubeTestbed


async def measure(
    testbed: KubeTestbed, state_dir: Path, iterations: int, report_every: float, min_interval: float
) -> str:
    cluster = Cluster.create_for(testbed, "bench-api-requests", state_dir)
    control_plane = testbed.control_plane
    async with ApiProxy(control_plane.url, ca_file=control_plane.ca_file) as proxy:
        cluster.through(proxy, state_dir)
        cluster.add_api_key_secret()
        settings = dataclasses.replace(FAST, status_min_interval_seconds=min_interval)
        async with running_operator(cluster, settings):
            proxy.requests.clear()
            started = time.monotonic()
            await simulate_run_life(cluster, RunPace(iterations=iterations, report_every_seconds=report_every))
            lifetime = time.monotonic() - started
        requests = proxy.requests
        status_writes = requests.count(verb="patch", kind="AgentRun", subresource="status")
        reads = sum(requests.count(verb=verb) for verb in ("get", "list"))
        writes = sum(requests.count(verb=verb) for verb in ("create", "update", "patch", "delete"))
        # Scaled to production's status interval, so "per second" reads as it would in a cluster.
        production_seconds = lifetime * 2.0 / min_interval
        return (
            f"{iterations} iterations, a report every {report_every}s, status writes at most every {min_interval}s\n"
            f"{requests.summary()}\n"
            f"requests per run: {len(requests)} (reads {reads}, writes {writes}, watches {requests.count(verb='watch')})"
            f" over {lifetime:.1f} s\n"
            f"status writes: {status_writes}, {status_writes / lifetime * min_interval / 2.0:.2f} per second at"
            f" product intervals (2 s; the run's life scaled to {production_seconds:.0f} s)"
        )


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
    with tempfile.TemporaryDirectory(prefix="agentrun-bench-") as tmp, KubeTestbed(Path(tmp) / "testbed") as testbed:
        print(asyncio.run(measure(testbed, Path(tmp), args.iterations, args.report_every, args.min_interval)))


if __name__ == "__main__":
    main()
