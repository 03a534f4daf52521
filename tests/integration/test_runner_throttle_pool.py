"""A run whose config names a permit server takes its model-call permits from the cluster-wide pool
(the RemoteLimiter behind the runner's Limiter interface), and a pool that stays full ends the run
with ThrottleQueueTimeout."""

from pathlib import Path

import pytest

from agentrun_api.contract import Outcome, RunnerConfig
from agentrun_operator.permits.pool import PoolLimits
from agentrun_operator.permits.server import CLUSTER_SCOPE
from agentrun_runner.__main__ import ConfigProblemError
from tests.harness.model_server import Answer, Failure, ModelServer, by_turn, call, in_order
from tests.harness.runner import STREAM_TOKEN, make_config, make_spec, run_in_process
from tests.harness.throttle import NAMESPACE, POOL, limiter_for, permit_server, token_of

pytestmark = pytest.mark.integration

RUN = "pooled"


def pooled_config(
    model_url: str, server_url: str, tmp_path: Path, wait: int, *, cluster_pool: str | None = None
) -> RunnerConfig:
    pool = {"clusterPool": cluster_pool} if cluster_pool else {"pool": POOL}
    spec = make_spec(model_url, throttle={"enabled": True, **pool, "maxSecondsToWaitInQueue": wait}, maxIterations=10)
    config = make_config(spec, tmp_path, name=RUN)
    run = config.run.model_copy(update={"namespace": NAMESPACE})
    return config.model_copy(update={"run": run, "permit_server_url": server_url})


async def test_model_calls_take_permits_from_the_pool(tmp_path: Path) -> None:
    script = by_turn([Answer(tool_calls=[call("list_files")]), Answer("done")])
    async with (
        permit_server([RUN], PoolLimits(max_in_flight=1, requests_per_minute=600), lease_seconds=1) as server,
        ModelServer(script) as model,
    ):
        config = pooled_config(model.base_url, f"http://127.0.0.1:{server.port}", tmp_path, wait=10)
        run = await run_in_process(config, tmp_path, permit_key=token_of(RUN))
        snapshot = server.registry.snapshot(NAMESPACE, POOL)

    assert run.progress.outcome is Outcome.SUCCEEDED
    assert len(model.requests) == 2
    assert snapshot is not None
    assert snapshot.granted_last_minute == 2, "each model call took a permit from the pool"
    assert snapshot.in_flight == 0, "and gave it back"


async def test_a_pool_that_stays_full_ends_the_run_with_queue_timeout(tmp_path: Path) -> None:
    async with (
        permit_server([RUN, "holder"], PoolLimits(max_in_flight=1, requests_per_minute=600), lease_seconds=1) as server,
        ModelServer(by_turn([Answer("never")])) as model,
    ):
        holder = limiter_for("holder", f"http://127.0.0.1:{server.port}")
        permit, _ = await holder.acquire(max_wait_seconds=5)
        try:
            config = pooled_config(model.base_url, f"http://127.0.0.1:{server.port}", tmp_path, wait=1)
            run = await run_in_process(config, tmp_path, permit_key=token_of(RUN))
        finally:
            await permit.release()
            await holder.aclose()

    assert run.progress.outcome is Outcome.THROTTLE_QUEUE_TIMEOUT
    assert f"pool {NAMESPACE}/{POOL}" in run.progress.message
    assert "1 calls were waiting" in run.progress.message
    assert run.progress.queue_wait.max_seconds >= 1.0
    assert model.requests == []
    assert STREAM_TOKEN not in run.progress.message


async def test_the_runner_asks_for_permits_with_its_permit_key_and_not_its_stream_token(tmp_path: Path) -> None:
    """The pool knows the run only by its permit key: a runner presenting its stream token gets no permit."""
    async with (
        permit_server([RUN], PoolLimits(max_in_flight=1, requests_per_minute=600), lease_seconds=1) as server,
        ModelServer(by_turn([Answer("done")])) as model,
    ):
        config = pooled_config(model.base_url, f"http://127.0.0.1:{server.port}", tmp_path, wait=1)
        run = await run_in_process(config, tmp_path, stream_token=token_of(RUN), permit_key="not-the-permit-key")
        snapshot = server.registry.snapshot(NAMESPACE, POOL)

    assert run.progress.outcome is Outcome.THROTTLE_QUEUE_TIMEOUT
    assert "Unauthorized" in run.progress.message
    assert model.requests == []
    assert snapshot is not None
    assert snapshot.granted_last_minute == 0


async def test_a_pooled_run_without_its_permit_key_is_a_config_problem(tmp_path: Path) -> None:
    config = pooled_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9", tmp_path, wait=1)
    with pytest.raises(ConfigProblemError, match="AGENTRUN_PERMIT_KEY is not set"):
        await run_in_process(config, tmp_path, permit_key="")


async def test_a_provider_429_without_retry_after_lowers_the_pools_rate(tmp_path: Path) -> None:
    script = in_order([Failure(429, message="rate limited"), Answer("done")])
    async with (
        permit_server([RUN], PoolLimits(max_in_flight=1, requests_per_minute=600), lease_seconds=1) as server,
        ModelServer(script) as model,
    ):
        config = pooled_config(model.base_url, f"http://127.0.0.1:{server.port}", tmp_path, wait=10)
        run = await run_in_process(config, tmp_path, permit_key=token_of(RUN))
        snapshot = server.registry.snapshot(NAMESPACE, POOL)

    assert run.progress.outcome is Outcome.SUCCEEDED  # the runner retried the call
    assert snapshot is not None
    assert snapshot.rate_decreases_total == 1, "the 429 reached the pool although it had no Retry-After"
    assert snapshot.requests_per_minute < 600


async def test_a_run_takes_permits_from_a_cluster_pool_its_namespace_may_use(tmp_path: Path) -> None:
    script = by_turn([Answer("done")])
    limits = PoolLimits(max_in_flight=1, requests_per_minute=600)
    async with (
        permit_server([RUN], limits, lease_seconds=1, cluster_pools={"org": True}) as server,
        ModelServer(script) as model,
    ):
        config = pooled_config(model.base_url, f"http://127.0.0.1:{server.port}", tmp_path, wait=10, cluster_pool="org")
        run = await run_in_process(config, tmp_path, permit_key=token_of(RUN))
        cluster = server.registry.snapshot(CLUSTER_SCOPE, "org")
        namespaced = server.registry.snapshot(NAMESPACE, POOL)

    assert run.progress.outcome is Outcome.SUCCEEDED
    assert cluster is not None
    assert cluster.granted_last_minute == 1
    assert namespaced is not None
    assert namespaced.granted_last_minute == 0


async def test_a_run_naming_a_cluster_pool_it_may_not_use_fails_at_once_saying_what_to_grant(tmp_path: Path) -> None:
    limits = PoolLimits(max_in_flight=1, requests_per_minute=600)
    async with (
        permit_server([RUN], limits, lease_seconds=1, cluster_pools={"org": False}) as server,
        ModelServer(by_turn([Answer("never")])) as model,
    ):
        config = pooled_config(model.base_url, f"http://127.0.0.1:{server.port}", tmp_path, wait=60, cluster_pool="org")
        run = await run_in_process(config, tmp_path, permit_key=token_of(RUN))

    assert run.progress.outcome is Outcome.THROTTLE_QUEUE_TIMEOUT
    assert f"namespace '{NAMESPACE}' may not use ClusterThrottlePool 'org'" in run.progress.message
    assert model.requests == []
