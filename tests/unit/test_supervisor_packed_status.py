"""A sleeping supervisor keeps its run's status encoded, and decodes it, unchanged, at its next look."""

import asyncio
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
import pytest

from agentrun_api import conditions as c
from agentrun_api.status import (
    AgentRunStatus,
    Budget,
    CheckpointInfo,
    Notification,
    Phase,
    QueueWait,
    Result,
    StreamRoute,
    Usage,
)
from agentrun_operator import reconcile
from agentrun_operator.kube import KubeClient
from agentrun_operator.metrics import Metrics
from agentrun_operator.reconcile import OperatorContext, Supervisor
from agentrun_operator.settings import OperatorSettings
from agentrun_operator.status_sync import set_condition

pytestmark = pytest.mark.unit


def full_status() -> AgentRunStatus:
    """A status with every field set, times with microseconds and a zone, as the operator writes them."""
    now = datetime(2026, 12, 4, 5, 0, 0, 123456, tzinfo=UTC)
    status = AgentRunStatus(
        phase=Phase.RUNNING,
        reason=c.REASON_STARTED,
        message="runner pod q3-runner-abcde is running",
        iteration=7,
        progress="7/50",
        start_time=now,
        completion_time=now,
        elapsed_seconds=42,
        restarts=1,
        last_checkpoint=CheckpointInfo(iteration=7, time=now, bytes=1024, total_bytes=8192),
        usage=Usage(prompt_tokens=700, completion_tokens=140, total_tokens=840),
        queue_wait=QueueWait(last_seconds=0.5, max_seconds=1.25, total_seconds=2.0),
        result=Result(summary="done", ref="configmap/q3-result", bytes=12),
        stream_url="http://q3-stream.team-a.svc:8080/events",
        job_name="q3-runner",
        budget=Budget(
            worst_case_seconds=3000,
            max_execution_seconds=1800,
            fits=False,
            active_deadline_seconds=1800,
            clock_start_time=now,
            deadline=now,
            stream_controller="ingress-nginx",
        ),
        stream_route=StreamRoute(controller="ingress-nginx", host="runs.example.com", path="/events", objects=["q3"]),
        notification=Notification(event_id="e1", attempts=1, last_attempt_time=now, last_error="HTTP 503"),
        observed_generation=2,
    )
    set_condition(
        status, c.ACCEPTED, True, c.REASON_CREATED, "the run's Job and companions exist", now=now, generation=2
    )
    set_condition(
        status, c.BUDGET_FITS, False, c.REASON_BUDGET_EXCEEDS, "50 iterations x 60s > 30m", now=now, generation=2
    )
    return status


def body(status: AgentRunStatus) -> dict[str, Any]:
    return {
        "apiVersion": "agentrun.dev/v1alpha1",
        "kind": "AgentRun",
        "metadata": {"name": "q3", "namespace": "team-a", "uid": "u1", "generation": 2},
        "spec": {"input": "x"},
        "status": status.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


async def supervisor(status: AgentRunStatus) -> Supervisor:
    op = OperatorContext(
        settings=OperatorSettings(),
        kube=KubeClient(kopf.ConnectionInfo(server="http://127.0.0.1:9")),
        metrics=Metrics.create(),
        http=aiohttp.ClientSession(),
    )
    return Supervisor(
        kopf.Body(body(status)),  # type: ignore[arg-type]
        op,
        kopf.LocalObjectLogger(body=kopf.Body(body(status)), settings=kopf.OperatorSettings()),  # type: ignore[arg-type]
        jobs=lambda key: [],
        pods=lambda key: [],
        progress=lambda key: [],
    )


async def close(sup: Supervisor) -> None:
    await sup.op.kube.close()
    await sup.op.http.close()


async def test_a_packed_status_decodes_to_the_same_status() -> None:
    sup = await supervisor(full_status())
    try:
        sup.pack_status()
        assert sup._status is None  # kept encoded only
        assert sup._packed_status
        assert sup.status == full_status()
        sup.pack_status()
        changed = sup.status.model_copy(update={"iteration": 7})
        sup.status = changed  # a status written meanwhile replaces the packed one
        sup.pack_status()
        assert sup.status == changed
    finally:
        await close(sup)


async def test_a_supervisor_packs_its_status_only_once_it_sleeps_unwoken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile, "PACK_STATUS_AFTER_SECONDS", 0.05)
    sup = await supervisor(full_status())
    wake = asyncio.Event()
    try:
        wake.set()
        await sup._sleep(wake, False, 1.0)  # woken at once: a run that reports keeps its status decoded
        assert sup._status is not None
        await sup._sleep(wake, False, 0.2)  # not woken for longer than the threshold
        assert sup._status is None
        assert sup.status == full_status()
    finally:
        await close(sup)
