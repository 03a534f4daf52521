"""Throttle pools on real runs: many AgentRuns on a LocalCluster share one ThrottlePool, and the scripted
model server, standing in for the provider, records what reached it. Used by the e2e test and the bench.

    async with LocalCluster(testbed, tmp, model_script=plan.model_script()) as cluster:
        await cluster.create_model_secret("model-key", "api-key")
        outcome = await run_pool_scenario(cluster, plan)

The pool is declared at 1 request per minute while the runs start, so that every run's first call
queues; once the pool's status shows all runs waiting, its spec is raised to the plan's rate (a live
edit, as a GitOps change would make it). From then on all runs compete, which is the window the
fairness figure is taken over. Runner processes start over many seconds on a small machine; without
this the early runs would have most of their calls done before the last one asked for its first.
"""

import itertools
import statistics
import time
from dataclasses import dataclass
from typing import Final

from tests.harness.agentruns import TERMINAL_PHASES, agent_run, agentruns_path, requests_of, wait_for
from tests.harness.local_cluster import LocalCluster
from tests.harness.model_server import CallSpan, ChatRequest, Script, most_in_window, paced, stepwise_script
from tests.harness.nodeagent.kube import JsonObject, KubeClient, namespaced_path


def pools_path(namespace: str) -> str:
    return namespaced_path("agentrun.dev/v1alpha1", "throttlepools", namespace)


# The rate the pool holds while the runs start: its bucket starts empty, so no grant for a minute.
HOLDING_REQUESTS_PER_MINUTE: Final = 1


@dataclass(frozen=True)
class PoolRunsPlan:
    """The scenario: how many runs, the pool's limits, and the calls each run makes."""

    runs: int = 20
    max_in_flight: int = 2
    requests_per_minute: int = 60
    calls_per_run: int = 4
    """Model calls of each run (its maxIterations; the last answer ends the run)."""
    queue_budget_seconds: int = 60
    """Each run's spec.throttle.maxSecondsToWaitInQueue. The first call waits for all runs to start too."""
    slow_call_seconds: float = 2.2
    fast_call_seconds: float = 0.3
    """Two calls in three are slow, longer than two grant intervals at 60/min, so more calls would be in
    flight at once than the pool allows if it did not hold them back: the in-flight limit is exercised."""
    start_timeout_seconds: float = 120.0
    """How long every run may take to start and queue its first call."""
    pool: str = "shared"

    def model_script(self) -> Script:
        def delay_of(request: ChatRequest) -> float:
            return self.fast_call_seconds if request.index % 3 == 2 else self.slow_call_seconds

        return paced(stepwise_script(self.calls_per_run), delay_of)

    def run_names(self) -> list[str]:
        return [f"pooled-{number:02d}" for number in range(self.runs)]

    def expected_seconds(self) -> float:
        """Roughly how long the calls take once the pool opens."""
        return self.runs * self.calls_per_run * 60 / self.requests_per_minute


@dataclass(frozen=True)
class PoolRunsOutcome:
    """What the scenario saw: each run's final status and model calls, and when the pool opened."""

    plan: PoolRunsPlan
    opened_at: float  # time.monotonic() when the pool's rate was raised
    statuses: dict[str, JsonObject]
    calls: dict[str, list[ChatRequest]]  # each run's model calls, in order
    spans: list[CallSpan]  # every model call's time in flight at the model server
    max_in_flight: int  # the most calls the model server answered at once

    def arrivals(self) -> list[float]:
        return sorted(call.received_at for calls in self.calls.values() for call in calls)

    def achieved_rate_per_minute(self) -> float:
        """Calls per minute at the model, from the first call after the pool opened to the last."""
        times = [at for at in self.arrivals() if at >= self.opened_at]
        return (len(times) - 1) / (times[-1] - times[0]) * 60 if len(times) > 1 else 0.0

    def most_in_a_minute(self) -> int:
        return most_in_window(self.arrivals(), 60.0)

    def competing_until(self) -> float:
        """When the first run made its last call: until then every run had calls left to make."""
        # A run without a single call (it failed before one) is the assertions' to report, not the summary's.
        return min((calls[-1].received_at for calls in self.calls.values() if calls), default=self.opened_at)

    def shares(self) -> dict[str, int]:
        """Calls each run got to make while all runs competed (from the opening until the first run's last call)."""
        end = self.competing_until()
        return {
            run: sum(1 for c in calls if self.opened_at <= c.received_at < end) for run, calls in self.calls.items()
        }

    def fairness_spread(self) -> float:
        """Largest distance of a run's share from the mean share, as a fraction of the mean."""
        shares = self.shares().values()
        mean = statistics.fmean(shares)
        return max(abs(share - mean) / mean for share in shares) if mean else float("inf")

    def waits_between_calls(self) -> list[float]:
        """For every call but a run's first: seconds from its previous answer to this call reaching the model.
        That is the call's queue wait plus the runner's own work in between (tools, a checkpoint write)."""
        ended = {span.request.index: span.ended_at for span in self.spans if span.request is not None}
        return sorted(
            later.received_at - ended[earlier.index]
            for calls in self.calls.values()
            for earlier, later in itertools.pairwise(calls)
            if earlier.index in ended
        )

    def longest_waits(self) -> dict[str, float]:
        """Each run's longest queue wait, as its status reports it (status.queueWait.maxSeconds)."""
        return {run: float((s.get("queueWait") or {}).get("maxSeconds", 0.0)) for run, s in self.statuses.items()}

    def summary(self) -> list[str]:
        plan = self.plan
        gaps = self.waits_between_calls()
        longest = sorted(self.longest_waits().values())
        phases = [status.get("phase") for status in self.statuses.values()]
        return [
            f"real runs {plan.runs} x {plan.calls_per_run} calls, pool {plan.max_in_flight} in flight, "
            f"{plan.requests_per_minute}/min",
            f"runs succeeded        {phases.count('Succeeded')}/{plan.runs}",
            f"achieved rate         {self.achieved_rate_per_minute():.1f}/min (limit {plan.requests_per_minute}/min)",
            f"max calls in 60s      {self.most_in_a_minute()} (limit {plan.requests_per_minute})",
            f"max in flight seen    {self.max_in_flight} (limit {plan.max_in_flight})",
            f"queue wait per call   p50 {_quantile(gaps, 0.5):.2f}s  p99 {_quantile(gaps, 0.99):.2f}s "
            "(answer to next call at the model, calls after a run's first)",
            f"longest wait per run  p50 {_quantile(longest, 0.5):.2f}s  max {longest[-1]:.2f}s "
            f"(status.queueWait.maxSeconds; budget {plan.queue_budget_seconds}s)",
            f"fairness spread       {self.fairness_spread() * 100:.1f}% of the mean share "
            f"({sum(self.shares().values())} calls while all {plan.runs} runs competed)",
        ] + [
            f"{run} {status.get('phase')} ({status.get('reason')}): {status.get('message')}"
            for run, status in sorted(self.statuses.items())
            if status.get("phase") != "Succeeded"
        ]


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def pooled_run(name: str, cluster: LocalCluster, plan: PoolRunsPlan) -> JsonObject:
    return agent_run(
        name,
        cluster,
        maxIterations=plan.calls_per_run,
        maxExecutionTime="10m",
        # No reader follows these runs' streams.
        streaming={"enabled": False},
        # The run's own limits never bind: only the pool holds the calls back.
        throttle={
            "enabled": True,
            "pool": plan.pool,
            "requestsPerMinute": 600,
            "maxSecondsToWaitInQueue": plan.queue_budget_seconds,
        },
    )


def throttle_pool(name: str, namespace: str, *, max_in_flight: int, requests_per_minute: int) -> JsonObject:
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "ThrottlePool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"maxRequestsInFlight": max_in_flight, "requestsPerMinute": requests_per_minute},
    }


async def pool_status(kube: KubeClient, name: str) -> JsonObject:
    pool = await kube.get(f"{pools_path(kube.namespace)}/{name}")
    status: JsonObject = (pool or {}).get("status") or {}
    return status


async def run_pool_scenario(cluster: LocalCluster, plan: PoolRunsPlan) -> PoolRunsOutcome:
    """Declare the pool, start the runs, open the pool once all wait, and wait for every run to end."""
    model = cluster.model_server
    if model is None:
        raise RuntimeError("the scenario reads the scripted model server's records; OPENAI_BASE_URL is set")
    names = plan.run_names()
    async with KubeClient(str(cluster.kubeconfig_path)) as kube:
        holding = throttle_pool(
            plan.pool,
            cluster.namespace,
            max_in_flight=plan.max_in_flight,
            requests_per_minute=HOLDING_REQUESTS_PER_MINUTE,
        )
        await kube.create(pools_path(cluster.namespace), holding)
        for name in names:
            await kube.create(agentruns_path(cluster.namespace), pooled_run(name, cluster, plan))

        async def all_waiting() -> JsonObject | None:
            status = await pool_status(kube, plan.pool)
            return status if status.get("waitingRuns") == plan.runs else None

        await wait_for(all_waiting, f"all {plan.runs} runs to queue at the pool", plan.start_timeout_seconds)
        opened_at = time.monotonic()
        await kube.merge_patch(
            f"{pools_path(cluster.namespace)}/{plan.pool}", {"spec": {"requestsPerMinute": plan.requests_per_minute}}
        )

        statuses: dict[str, JsonObject] = {}

        async def all_ended() -> bool:
            for name in names:
                if name not in statuses:
                    run = await kube.get(f"{agentruns_path(cluster.namespace)}/{name}")
                    status: JsonObject = (run or {}).get("status") or {}
                    if status.get("phase") in TERMINAL_PHASES:
                        statuses[name] = status
            return len(statuses) == len(names)

        await wait_for(all_ended, f"all {plan.runs} runs to end", 1.5 * plan.expected_seconds() + 60)
    return PoolRunsOutcome(
        plan=plan,
        opened_at=opened_at,
        statuses=statuses,
        calls={name: requests_of(model, name) for name in names},
        spans=list(model.spans),
        max_in_flight=model.max_in_flight,
    )
