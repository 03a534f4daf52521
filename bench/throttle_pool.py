"""Benchmark: simulated runs sharing one throttle pool over real HTTP, in real time.

Each run loops model calls against a scripted OpenAI-compatible endpoint on 127.0.0.1, every call
first taking a permit from a real permit server through RemoteLimiter; a quarter of the runs make
three calls at once (parallel tool calls). Prints the achieved rate against the limit, the peak in
flight the model endpoint saw, p50/p99 queue wait, and the fairness spread (largest distance of a
run's share of grants from the mean share, while all runs contend).

    PYTHONPATH=api:operator:runner_image:. python bench/throttle_pool.py --rpm 600 --seconds 30
"""

import argparse
import asyncio
import random
import statistics

from tests.harness.throttle import ScriptedModel, max_starts_in_window, permit_server, run_scenario

from agentrun_operator.permits.pool import PoolLimits


async def bench(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    runs = [f"run-{i:02d}" for i in range(args.runs)]
    greedy = set(runs[: args.runs // 4])
    latencies = random.Random(1)
    model = ScriptedModel(latency=lambda _: latencies.uniform(args.min_latency, args.max_latency), clock=loop.time)
    limits = PoolLimits(max_in_flight=args.in_flight, requests_per_minute=args.rpm)
    async with permit_server(runs, limits, lease_seconds=args.lease) as server, model.serve() as model_url:
        opened_at = loop.time() + args.lease
        stop_at = opened_at + args.seconds
        result = await run_scenario(
            permit_url=f"http://127.0.0.1:{server.port}",
            model_url=model_url,
            runs=runs,
            parallel_calls=lambda run: 3 if run in greedy else 1,
            queue_budget_seconds=args.budget,
            opened_at=opened_at,
            stop_at=stop_at,
        )
    in_window = [at for at, _ in model.arrivals if opened_at <= at < stop_at]
    waits = sorted(result.waits)
    p99 = waits[min(len(waits) - 1, int(0.99 * len(waits)))]
    print(f"runs {args.runs} ({len(greedy)} with 3 parallel calls), pool {args.in_flight} in flight, {args.rpm}/min")
    print(f"calls                 {len(result.grants)} ({len(result.timeouts)} queue timeouts)")
    print(f"achieved rate         {len(in_window) / args.seconds * 60:.1f}/min (limit {args.rpm}/min)")
    window = min(60.0, args.seconds)
    allowed = int(limits.burst + args.rpm * window / 60)
    label = f"max starts in {window:g}s"
    print(f"{label:<22}{max_starts_in_window(in_window, window)} (limit {allowed})")
    print(f"max in flight seen    {model.peak_in_flight} (limit {args.in_flight})")
    print(f"queue wait            p50 {statistics.median(waits):.2f}s  p99 {p99:.2f}s  max {waits[-1]:.2f}s")
    print(f"fairness spread       {result.fairness_spread() * 100:.1f}% of the mean share")


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
    parser.add_argument("--quick", action="store_true", help="4 runs for 3 s: a smoke test of the benchmark")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds = 4, 3.0
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
