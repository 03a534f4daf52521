"""Prometheus metrics, served on /metrics. Labels are bounded: phases and handler names only."""

import dataclasses
from collections.abc import Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from agentrun_api.status import Phase

_LONG_BUCKETS = (10, 30, 60, 300, 600, 1800, 3600, 7200, 21600, 86400, float("inf"))
_ITERATION_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 10000, float("inf"))
_WAIT_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, float("inf"))


@dataclasses.dataclass
class Metrics:
    registry: CollectorRegistry
    runs: Gauge
    run_duration_seconds: Histogram
    run_iterations: Histogram
    restarts_total: Counter
    resumes_total: Counter
    reconcile_errors_total: Counter
    status_writes_total: Counter
    queue_wait_seconds: Histogram

    @classmethod
    def create(cls) -> "Metrics":
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            runs=Gauge("agentrun_runs", "AgentRuns this operator supervises, by phase.", ["phase"], registry=registry),
            run_duration_seconds=Histogram(
                "agentrun_run_duration_seconds",
                "Wall-clock time of ended runs.",
                buckets=_LONG_BUCKETS,
                registry=registry,
            ),
            run_iterations=Histogram(
                "agentrun_run_iterations", "Iterations of ended runs.", buckets=_ITERATION_BUCKETS, registry=registry
            ),
            restarts_total=Counter("agentrun_restarts_total", "Runner pods replaced.", registry=registry),
            resumes_total=Counter(
                "agentrun_resumes_total", "Runners that resumed from a checkpoint.", registry=registry
            ),
            reconcile_errors_total=Counter(
                "agentrun_reconcile_errors_total", "Failed reconcile steps.", ["handler"], registry=registry
            ),
            status_writes_total=Counter("agentrun_status_writes_total", "AgentRun status patches.", registry=registry),
            queue_wait_seconds=Histogram(
                "agentrun_queue_wait_seconds",
                "Longest throttle-queue wait of each ended run.",
                buckets=_WAIT_BUCKETS,
                registry=registry,
            ),
        )

    def set_phase_counts(self, counts: Mapping[Phase, int]) -> None:
        for phase in Phase:
            self.runs.labels(phase=phase.value).set(counts.get(phase, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def start_metrics_server(metrics: Metrics, port: int, host: str = "0.0.0.0") -> tuple[web.AppRunner, int]:  # noqa: S104 - scraped from other pods
    """Serve /metrics; returns the runner (to clean up) and the bound port (port 0 picks one)."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # aiohttp exposes the bound sockets only here
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, int(bound)
