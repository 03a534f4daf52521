"""The kopf entry module: registers handlers and routes each to plain functions elsewhere.

- startup/cleanup: settings, API client, metrics endpoint, kopf's storage of its own bookkeeping in
  annotations under agentrun.dev (the status schema allows no unknown fields, so not status.kopf);
- indexes of the runs' Jobs, pods and progress ConfigMaps (watched, never polled), and wake-ups of
  the run's supervisor when one of them changes;
- create/resume: admit the run (``reconcile.admit``);
- a daemon per run: ``reconcile.Supervisor``;
- ThrottlePools and the permit server: ``agentrun_operator.permits.handlers``, registered by importing it.
"""

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

import agentrun_operator.permits.handlers  # noqa: F401 - registers the ThrottlePool handlers and the permit server
from agentrun_api import constants
from agentrun_operator.children import ROLE_PROGRESS, ROLE_RUNNER
from agentrun_operator.kube import ApiError, KubeClient
from agentrun_operator.metrics import Metrics, start_metrics_server
from agentrun_operator.observations import JobObservation, PodObservation, ProgressObservation
from agentrun_operator.peering import configure_peering
from agentrun_operator.reconcile import OperatorContext, Supervisor, admit, utcnow
from agentrun_operator.settings import OperatorSettings

AGENTRUNS = (constants.GROUP, constants.VERSION, constants.PLURAL)
MANAGED: dict[str, Any] = {
    constants.LABEL_MANAGED_BY: constants.MANAGED_BY,
    constants.LABEL_RUN: kopf.PRESENT,
}


def _context(memo: Any) -> OperatorContext:
    op: OperatorContext = memo.agentrun
    return op


def _run_key(namespace: str | None, labels: Mapping[str, str]) -> tuple[str, str]:
    return (namespace or "", str(labels.get(constants.LABEL_RUN, "")))


@kopf.on.startup()
async def start(
    settings: kopf.OperatorSettings, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    config: OperatorSettings = getattr(memo, "operator_settings", None) or OperatorSettings.from_env()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=constants.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=constants.GROUP)
    settings.posting.level = logging.INFO
    configure_peering(settings, config)
    settings.watching.server_timeout = 300
    # Filter on the server: the operator watches only its own runners' pods, Jobs and progress
    # ConfigMaps, not every pod and ConfigMap of the cluster.
    selectors = settings.watching.label_selectors
    selectors["batch/v1", "jobs"] = (
        f"{constants.LABEL_MANAGED_BY}={constants.MANAGED_BY},{constants.LABEL_ROLE}={ROLE_RUNNER}"
    )
    selectors["v1", "pods"] = f"{constants.LABEL_RUN},{constants.LABEL_ROLE}={ROLE_RUNNER}"
    selectors["v1", "configmaps"] = (
        f"{constants.LABEL_MANAGED_BY}={constants.MANAGED_BY},{constants.LABEL_ROLE}={ROLE_PROGRESS}"
    )
    info = kopf.login_with_kubeconfig(settings=settings) or kopf.login_with_service_account(settings=settings)
    if info is None:
        raise kopf.PermanentError("no Kubernetes credentials: set KUBECONFIG or run in a pod with a service account")
    metrics = Metrics.create()
    memo.agentrun = OperatorContext(
        settings=config,
        kube=KubeClient(info),
        metrics=metrics,
        http=aiohttp.ClientSession(),
        clock=getattr(memo, "clock", None) or utcnow,
    )
    memo.connection = info
    if config.metrics_port:
        memo.metrics_server, _port = await start_metrics_server(metrics, config.metrics_port)
    logger.info("agentrun operator started (namespace: %s)", config.watch_namespace or "all")


@kopf.on.login()
def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    info: kopf.ConnectionInfo = memo.connection
    return info


@kopf.on.cleanup()
async def stop(memo: Any, **_: Any) -> None:
    op = _context(memo)
    await op.kube.close()
    await op.http.close()
    server = getattr(memo, "metrics_server", None)
    if server is not None:
        await server.cleanup()


@kopf.index("batch/v1", "jobs", labels={**MANAGED, constants.LABEL_ROLE: ROLE_RUNNER})
async def runner_jobs(
    body: Any, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> dict[tuple[str, str], JobObservation]:
    return {_run_key(namespace, labels): JobObservation.from_object(body)}


@kopf.index("v1", "pods", labels={constants.LABEL_RUN: kopf.PRESENT, constants.LABEL_ROLE: ROLE_RUNNER})
async def runner_pods(
    body: Any, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> dict[tuple[str, str], PodObservation]:
    return {_run_key(namespace, labels): PodObservation.from_object(body)}


@kopf.index("v1", "configmaps", labels={**MANAGED, constants.LABEL_ROLE: ROLE_PROGRESS})
async def progress_reports(
    body: Any, namespace: str | None, labels: Mapping[str, str], **_: Any
) -> dict[tuple[str, str], ProgressObservation]:
    return {_run_key(namespace, labels): ProgressObservation.from_object(body)}


@kopf.on.event("batch/v1", "jobs", labels={**MANAGED, constants.LABEL_ROLE: ROLE_RUNNER})
@kopf.on.event("v1", "pods", labels={constants.LABEL_RUN: kopf.PRESENT, constants.LABEL_ROLE: ROLE_RUNNER})
@kopf.on.event("v1", "configmaps", labels={**MANAGED, constants.LABEL_ROLE: ROLE_PROGRESS})
async def child_changed(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    _context(memo).wake(_run_key(namespace, labels))


@kopf.on.event(*AGENTRUNS)
async def run_changed(type: str, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    op = _context(memo)
    if type == "DELETED":
        op.record_phase((namespace or "", name), None)
    op.wake((namespace or "", name))


@kopf.on.resume(*AGENTRUNS)
@kopf.on.create(*AGENTRUNS)
async def admit_run(body: kopf.Body, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    op = _context(memo)
    try:
        await admit(body, op, logger)
    except (kopf.PermanentError, kopf.TemporaryError):
        raise
    except ApiError as error:
        # Overload (429) and server errors pass: retry soon, as the API server asked if it did.
        op.metrics.reconcile_errors_total.labels(handler="admit").inc()
        raise kopf.TemporaryError(str(error), delay=error.retry_after or op.settings.retry_delay_seconds) from error
    except (aiohttp.ClientError, TimeoutError) as error:
        op.metrics.reconcile_errors_total.labels(handler="admit").inc()
        raise kopf.TemporaryError(f"API server unreachable: {error}", delay=op.settings.retry_delay_seconds) from error


@kopf.daemon(*AGENTRUNS, cancellation_backoff=5, cancellation_timeout=10, backoff=5)
async def supervise_run(
    body: kopf.Body,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    stopped: Any,
    **indexes: Any,
) -> None:
    """The run's supervisor; kopf passes the indexes above by their function names."""

    def lookup(index: Any) -> Any:
        return lambda key: list(index.get(key, []))

    supervisor = Supervisor(
        body,
        _context(memo),
        logger,
        jobs=lookup(indexes["runner_jobs"]),
        pods=lookup(indexes["runner_pods"]),
        progress=lookup(indexes["progress_reports"]),
    )
    await supervisor.run(stopped)
