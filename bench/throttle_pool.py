"""Benchmark: runs sharing one throttle pool, in real time. Three phases:

simulated: each run loops model calls against a scripted OpenAI-compatible endpoint on 127.0.0.1,
every call first taking a permit from a real permit server through RemoteLimiter; a quarter of the
runs make three calls at once (parallel tool calls).

hidden limit: the same simulated runs against a provider that enforces a rate limit it does not
publish (a token bucket below the pool's declared requestsPerMinute; a call over it gets 429 with
Retry-After: 1), once with a fixed-rate pool (429s only pause it, for Retry-After) and once with the
adaptive pool (AIMD: each 429 halves its rate, which climbs back while none come). Each prints the
calls answered per minute, the 429 count, and the ratio of the answered rate to the hidden limit.

real runs: the issue's scenario on the local cluster (the real control plane, the operator as a process
with its permit server, runner pods on the real control plane, run as processes by the node agent): 20 AgentRuns of 4
model calls on a ThrottlePool of 2 in flight and 60 per minute (tests/harness/pool_runs.py).

Each prints the achieved rate against the limit, the most calls the model endpoint saw in flight,
queue waits (p50/p99), and the fairness spread (largest distance of a run's share of the calls from
the mean share, while all runs contend).

    PYTHONPATH=api:common:operator:runner_image:. python bench/throttle_pool.py --rpm 600 --seconds 30
    PYTHONPATH=api:common:operator:runner_image:. python bench/throttle_pool.py --phase hidden-limit
    PYTHONPATH=api:common:operator:runner_image:. python bench/throttle_pool.py --phase real-runs
"""

import argparse
import asyncio
import random
import statistics
import tempfile
from pathlib import Path

from tests.harness.local_cluster import LocalCluster
from tests.harness.model_server import ModelServer, most_in_window
from tests.harness.nodeagent import MountNamespaceUnavailableError, check_mount_namespaces
from tests.harness.pool_runs import PoolRunsPlan, run_pool_scenario
from tests.harness.testbed import KubeTestbed
from tests.harness.throttle import HiddenLimit, arrivals_by_run, permit_server, provider_script, run_scenario

from agentrun_operator.permits.pool import Aimd, PoolLimits


async def bench(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    runs = [f"run-{i:02d}" for i in range(args.runs)]
    greedy = set(runs[: args.runs // 4])
    latencies = random.Random(1)
    model = ModelServer(
        provider_script(lambda _: latencies.uniform(args.min_latency, args.max_latency)), clock=loop.time
    )
    limits = PoolLimits(max_in_flight=args.in_flight, requests_per_minute=args.rpm)
    async with permit_server(runs, limits, lease_seconds=args.lease) as server, model:
        opened_at = loop.time() + args.lease
        stop_at = opened_at + args.seconds
        result = await run_scenario(
            permit_url=f"http://127.0.0.1:{server.port}",
            model_url=model.base_url,
            runs=runs,
            parallel_calls=lambda run: 3 if run in greedy else 1,
            queue_budget_seconds=args.budget,
            opened_at=opened_at,
            stop_at=stop_at,
        )
    in_window = [at for at, _ in arrivals_by_run(model) if opened_at <= at < stop_at]
    waits = sorted(result.waits)
    p99 = waits[min(len(waits) - 1, int(0.99 * len(waits)))]
    print(f"runs {args.runs} ({len(greedy)} with 3 parallel calls), pool {args.in_flight} in flight, {args.rpm}/min")
    print(f"calls                 {len(result.grants)} ({len(result.timeouts)} queue timeouts)")
    print(f"achieved rate         {len(in_window) / args.seconds * 60:.1f}/min (limit {args.rpm}/min)")
    window = min(60.0, args.seconds)
    allowed = int(limits.burst + args.rpm * window / 60)
    label = f"max starts in {window:g}s"
    print(f"{label:<22}{most_in_window(in_window, window)} (limit {allowed})")
    print(f"max in flight seen    {model.max_in_flight} (limit {args.in_flight})")
    print(f"queue wait            p50 {statistics.median(waits):.2f}s  p99 {p99:.2f}s  max {waits[-1]:.2f}s")
    print(f"fairness spread       {result.fairness_spread() * 100:.1f}% of the mean share")


async def bench_hidden_limit(args: argparse.Namespace, *, adaptive: bool) -> None:
    loop = asyncio.get_running_loop()
    runs = [f"run-{i:02d}" for i in range(args.hidden_runs)]
    latencies = random.Random(2)
    provider = HiddenLimit(
        requests_per_minute=args.hidden_rpm,
        burst=args.hidden_burst,
        latency=lambda _: latencies.uniform(args.min_latency, args.max_latency),
    )
    model = ModelServer(provider.script, clock=loop.time)
    limits = PoolLimits(max_in_flight=args.hidden_in_flight, requests_per_minute=args.declared_rpm)
    aimd = Aimd() if adaptive else Aimd(decrease_factor=1.0)
    async with permit_server(runs, limits, lease_seconds=args.lease, aimd=aimd) as server, model:
        opened_at = loop.time() + args.lease
        stop_at = opened_at + args.hidden_seconds
        await run_scenario(
            permit_url=f"http://127.0.0.1:{server.port}",
            model_url=model.base_url,
            runs=runs,
            parallel_calls=lambda _: 2,
            queue_budget_seconds=args.budget,
            opened_at=opened_at,
            stop_at=stop_at,
        )
    answered = sum(1 for at in provider.answered_at if opened_at <= at < stop_at)
    rejected = sum(1 for at in provider.rejected_at if opened_at <= at < stop_at)
    rate = answered / args.hidden_seconds * 60
    name = "adaptive (AIMD)" if adaptive else "fixed rate"
    print(
        f"{name:<16} answered {rate:6.1f}/min   429s {rejected:5d} ({rejected / args.hidden_seconds * 60:.1f}/min)   "
        f"achieved/hidden limit {rate / args.hidden_rpm:.2f}"
    )


async def bench_real_runs(plan: PoolRunsPlan) -> None:
    try:
        check_mount_namespaces()
    except MountNamespaceUnavailableError as error:
        print(f"real runs: skipped, the node agent cannot run pods here: {error}")
        return
    with tempfile.TemporaryDirectory(prefix="throttle-pool-bench-") as state_dir:
        testbed = KubeTestbed(Path(state_dir) / "testbed")
        await asyncio.to_thread(testbed.start)
        try:
            print(f"on Kubernetes {testbed.version} (the real control plane and the node agent)", flush=True)
            async with LocalCluster(testbed, Path(state_dir), model_script=plan.model_script()) as cluster:
                if cluster.model.real:
                    print("real runs: skipped, OPENAI_BASE_URL is set (the phase reads the scripted model's records)")
                    return
                await cluster.create_model_secret("model-key", "api-key")
                outcome = await run_pool_scenario(cluster, plan)
        finally:
            await asyncio.to_thread(testbed.stop)
    print("\n".join(outcome.summary()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--in-flight", type=int, default=2)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window while all runs contend")
    parser.add_argument("--lease", type=float, default=2.0, help="lease seconds (also the pool's closed start)")
    parser.add_argument("--budget", type=float, default=120.0, help="queue budget of every call, seconds")
    parser.add_argument("--min-latency", type=float, default=0.05)
    parser.add_argument("--max-latency", type=float, default=0.15)
    parser.add_argument("--hidden-rpm", type=float, default=600, help="the provider's unpublished limit, per minute")
    parser.add_argument("--hidden-burst", type=float, default=5, help="calls the provider lets through back to back")
    parser.add_argument("--declared-rpm", type=int, default=1200, help="the pool's requestsPerMinute (above the limit)")
    parser.add_argument("--hidden-in-flight", type=int, default=16, help="the pool's maxRequestsInFlight")
    parser.add_argument("--hidden-runs", type=int, default=8, help="simulated runs, two calls at once each")
    parser.add_argument("--hidden-seconds", type=float, default=60.0, help="measured window of each pool")
    parser.add_argument(
        "--phase",
        choices=("simulated", "hidden-limit", "real-runs", "all"),
        default="all",
        help="which phase to run (default all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test: 4 simulated runs for 3 s; 4 real runs of 2 calls at 120/min"
    )
    args = parser.parse_args()
    plan = PoolRunsPlan()
    if args.quick:
        args.runs, args.seconds, args.hidden_seconds = 4, 3.0, 8.0
        plan = PoolRunsPlan(runs=4, calls_per_run=2, requests_per_minute=120)
    if args.phase in ("simulated", "all"):
        print("== simulated runs (RemoteLimiter clients)", flush=True)
        asyncio.run(bench(args))
    if args.phase in ("hidden-limit", "all"):
        print(
            f"== hidden provider limit ({args.hidden_rpm:g}/min, burst {args.hidden_burst:g}; pool declares "
            f"{args.declared_rpm}/min): fixed rate vs adaptive",
            flush=True,
        )
        asyncio.run(bench_hidden_limit(args, adaptive=False))
        asyncio.run(bench_hidden_limit(args, adaptive=True))
    if args.phase in ("real-runs", "all"):
        print("== real runs (operator, runner pods on the real control plane and the node agent)", flush=True)
        asyncio.run(bench_real_runs(plan))


if __name__ == "__main__":
    main()
