"""The kopf entry module: registers handlers and routes each to plain functions elsewhere.

- startup/cleanup: settings, API client, metrics endpoint, kopf's storage of its own bookkeeping in
  annotations under agentrun.dev (the status schema allows no unknown fields, so not status.kopf);
- indexes of the runs' Jobs, pods, progress ConfigMaps and AgentRunApprovals (watched, never polled), and
  wake-ups of the run's supervisor when one of them changes;
- the AgentRun watch: every event's body goes to the run registry (``supervisors.RunRegistry``), which
  admits each run and keeps one ``reconcile.Supervisor`` task per live run. No kopf create/resume
  handler and no kopf daemon: AgentRuns carry no finalizer and no kopf annotations;
- leadership (``leadership``): with a Lease named, only the replica holding it supervises runs and
  serves permits; the others keep their indexes and the registry's bodies warm for a quick takeover;
- MCPServers: each watch event goes to ``mcp_listing.ServerLister``, which lists the server's tools into
  its status;
- ThrottlePools and the permit server: ``agentrun_operator.permits.handlers`` (its handlers register on import;
  the startup here starts its permit server with the operator's API client).
"""

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import kopf

from agentrun_api import approval, constants, mcpserver, throttlepool
from agentrun_common.kube import credentials
from agentrun_operator.children import ROLE_PROGRESS, ROLE_RUNNER
from agentrun_operator.kube import KubeClient, connection_info
from agentrun_operator.leadership import LeaderElector
from agentrun_operator.mcp_listing import ServerLister
from agentrun_operator.metrics import Metrics, start_metrics_server
from agentrun_operator.observations import ApprovalObservation, JobObservation, PodObservation, ProgressObservation
from agentrun_operator.permits.handlers import start_permits  # the import also registers the ThrottlePool handlers
from agentrun_operator.permits.server import PermitServer
from agentrun_operator.reconcile import OperatorContext, utcnow
from agentrun_operator.settings import OperatorSettings
from agentrun_operator.supervisors import RunRegistry

AGENTRUNS = (constants.GROUP, constants.VERSION, constants.PLURAL)
MCPSERVERS = (constants.GROUP, constants.VERSION, mcpserver.PLURAL)
MANAGED: dict[str, Any] = {
    constants.LABEL_MANAGED_BY: constants.MANAGED_BY,
    constants.LABEL_RUN: kopf.PRESENT,
}


class ThrottlePoolDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base (the last handled spec, in an annotation), for the only kind that needs one.

    kopf builds a diff base for every event of every kind it watches, a deep copy of the object, though only
    create/update handlers use it; here those are the ThrottlePools' alone. AgentRuns, Jobs, pods and
    progress ConfigMaps have watch-event handlers only: for them the copy was a third of kopf's work per
    event (thousands of events per minute at scale), so they get an empty diff base instead.
    """

    def build(self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None) -> kopf.BodyEssence:
        if body.get("kind") not in (throttlepool.KIND, None):
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        if body.get("kind") not in (throttlepool.KIND, None):
            return None
        return super().fetch(body=body)


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
    settings.persistence.diffbase_storage = ThrottlePoolDiffBase(prefix=constants.GROUP)
    settings.posting.level = logging.INFO
    # Replicas coordinate through the operator's own Lease (``leadership``), not kopf peering: peering
    # pauses only kopf's handlers, not the registry's supervisor tasks.
    settings.peering.standalone = True
    settings.watching.server_timeout = 300
    if config.watch_namespace:
        # Watching one named namespace needs no list of namespaces, and the chart grants none: without this,
        # kopf retries a forbidden cluster-wide namespace list for about a minute before it serves the runs.
        settings.scanning.disabled = True
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
    metrics = Metrics.create()
    try:
        # A loader, not fixed credentials: the client and kopf (``login``) read a rotated token again.
        memo.credentials = credentials.loader()
        kube = KubeClient(memo.credentials)
    except credentials.CredentialsError as error:
        raise kopf.PermanentError(str(error)) from None
    memo.agentrun = OperatorContext(
        settings=config,
        kube=kube,
        metrics=metrics,
        http=aiohttp.ClientSession(),
        clock=getattr(memo, "clock", None) or utcnow,
    )
    memo.runs = RunRegistry(memo.agentrun, max_concurrent_admissions=config.max_concurrent_admissions)
    await start_permits(memo, kube, config.permits)
    memo.mcp_lister = ServerLister(kube)
    memo.mcp_listing = asyncio.create_task(memo.mcp_lister.run(), name="MCP server listing")
    if config.metrics_port:
        memo.metrics_server, _port = await start_metrics_server(metrics, config.metrics_port, config.listen_host)
    await _start_leading_or_electing(memo, config)
    logger.info("agentrun operator started (namespace: %s)", config.watch_namespace or "all")


async def _start_leading_or_electing(memo: Any, config: OperatorSettings) -> None:
    runs: RunRegistry = memo.runs
    permits: PermitServer | None = getattr(memo, "permit_server", None)

    async def lead() -> None:
        if permits is not None:
            permits.registry.take_over()
        await runs.lead()

    async def follow() -> None:
        if permits is not None:
            permits.registry.leading = False
        await runs.follow()

    if not config.leader_election.enabled:
        await lead()
        return
    if permits is not None:
        permits.registry.leading = False  # until this replica holds the Lease
    elector = LeaderElector(memo.agentrun.kube, config.leader_election, on_lead=lead, on_follow=follow)
    memo.elector = elector
    memo.election = asyncio.create_task(elector.run(), name="leader election")


@kopf.on.login()
def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """Read the credentials again at every call: kopf calls this at start, when the last ones expire (soon, so
    a rotated token file is picked up), and after a 401; it refuses the very credentials the server refused."""
    try:
        return connection_info(memo.credentials())
    except credentials.CredentialsError as error:
        raise kopf.TemporaryError(str(error), delay=1.0) from None


@kopf.on.cleanup()
async def stop(memo: Any, **_: Any) -> None:
    op = _context(memo)
    election: asyncio.Task[None] | None = getattr(memo, "election", None)
    if election is not None:
        election.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await election
        await memo.elector.release()
    runs: RunRegistry = memo.runs
    await runs.follow()
    listing: asyncio.Task[None] | None = getattr(memo, "mcp_listing", None)
    if listing is not None:
        listing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listing
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


@kopf.index(constants.GROUP, constants.VERSION, approval.PLURAL)
async def run_approvals(
    body: Any, namespace: str | None, spec: Mapping[str, Any], **_: Any
) -> dict[tuple[str, str], ApprovalObservation]:
    observed = ApprovalObservation.from_object(body)
    return {} if observed is None else {(namespace or "", str(spec.get("run") or "")): observed}


@kopf.on.event(constants.GROUP, constants.VERSION, approval.PLURAL)
async def approval_changed(namespace: str | None, spec: Mapping[str, Any], memo: Any, **_: Any) -> None:
    _context(memo).wake((namespace or "", str(spec.get("run") or "")))


@kopf.on.event(*MCPSERVERS)
async def mcp_server_changed(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """An MCPServer declared, changed or deleted: the lister lists its tools again when due."""
    lister: ServerLister = memo.mcp_lister
    lister.observe(type, dict(body))


@kopf.on.event(*AGENTRUNS)
async def run_changed(
    type: str, event: kopf.RawEvent, namespace: str | None, name: str, memo: Any, **indexes: Any
) -> None:
    """Every AgentRun event: its body to the registry (which starts, feeds or stops its supervisor).

    kopf passes the indexes above by their function names; they are live views, kept once."""
    op = _context(memo)
    runs: RunRegistry = memo.runs

    def lookup(index: Any) -> Any:
        return lambda key: list(index.get(key, []))

    runs.attach(
        jobs=lookup(indexes["runner_jobs"]),
        pods=lookup(indexes["runner_pods"]),
        progress=lookup(indexes["progress_reports"]),
        approvals=lookup(indexes["run_approvals"]),
    )
    if type == "DELETED":
        op.record_phase((namespace or "", name), None)
    runs.observe(type or "", event["object"])
    op.wake((namespace or "", name))
