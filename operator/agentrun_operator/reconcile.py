"""The operator's side effects: admitting a run (creating its children) and supervising it.

The decisions themselves are pure (``status_sync``, ``children``, ``budget``); this module carries
them out against the API server, writes the status at a bounded rate and posts the Events.
"""

import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import kopf
import pydantic

from agentrun_api import conditions as c
from agentrun_api import constants, contract
from agentrun_api.names import run_name_problem
from agentrun_api.spec import AgentRunSpec, CompletionWebhookSpec
from agentrun_api.status import AgentRunStatus, Notification, Phase, StreamRoute
from agentrun_common.stream_timeouts import check_stream_chain
from agentrun_operator import approvals, children, policy, run_route, run_tools, webhook
from agentrun_operator.approvals import RemoveJobWhileWaiting, ResumeAfterApproval
from agentrun_operator.budget import compute_budget, seconds_left
from agentrun_operator.kube import ApiError, KubeClient
from agentrun_operator.metrics import Metrics
from agentrun_operator.observations import (
    ApprovalObservation,
    JobObservation,
    Observed,
    PodObservation,
    ProgressObservation,
)
from agentrun_operator.parsing import InvalidSpecError, parse_spec
from agentrun_operator.settings import OperatorSettings
from agentrun_operator.status_sync import (
    WAITING_FOR_POD,
    DeleteJob,
    DeletePod,
    EventNote,
    RecreateJob,
    RunContext,
    SetJobSuspended,
    Urgency,
    condition_of,
    decide,
    run_deadline,
    set_condition,
    stream_url,
    transition_events,
    write_urgency,
)

RunKey = tuple[str, str]  # (namespace, name)
# Longest wait of a supervisor for its run's acceptance without a wake: a safety net only.
ACCEPTANCE_FALLBACK_SECONDS = 60.0
# A supervisor not woken for this long keeps its run's status encoded until its next look: a decoded status is
# about 8 KiB of models, its JSON about 2 KiB, and most of thousands of live runs wait for minutes. A run that
# reports progress wakes its supervisor every status interval, sooner than this, and is never re-decoded.
PACK_STATUS_AFTER_SECONDS = 5.0


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass
class OperatorContext:
    """What every handler shares, kept in kopf's memo."""

    settings: OperatorSettings
    kube: KubeClient
    metrics: Metrics
    http: aiohttp.ClientSession  # for webhooks
    # The time every decision is made at; tests pass a clock they can move forward.
    clock: Callable[[], datetime] = utcnow
    wakes: dict[RunKey, asyncio.Event] = dataclasses.field(default_factory=dict)
    phases: dict[RunKey, Phase] = dataclasses.field(default_factory=dict)
    phase_counts: collections.Counter[Phase] = dataclasses.field(default_factory=collections.Counter)

    def wake(self, key: RunKey) -> None:
        event = self.wakes.get(key)
        if event is not None:
            event.set()

    def record_phase(self, key: RunKey, phase: Phase | None) -> None:
        # Counted as phases change, not recounted over every run at each change (quadratic at scale).
        previous = self.phases.pop(key, None)
        if previous is not None:
            self.phase_counts[previous] -= 1
        if phase is not None:
            self.phases[key] = phase
            self.phase_counts[phase] += 1
        self.metrics.set_phase_counts(self.phase_counts)


def read_status(body: Mapping[str, Any]) -> AgentRunStatus:
    try:
        return AgentRunStatus.model_validate(body.get("status") or {})
    except pydantic.ValidationError:
        # A status this operator did not write (or an older schema): start from nothing.
        return AgentRunStatus()


def is_accepted(body: Mapping[str, Any]) -> bool:
    """Admitted (children created), or ended: either way nothing is left to admit."""
    status = read_status(body)
    accepted = condition_of(status, c.ACCEPTED)
    return (accepted is not None and accepted.status == "True") or (status.phase is not None and status.phase.terminal)


async def write_status(op: OperatorContext, owner: children.RunOwner, status: AgentRunStatus) -> None:
    document = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    if status.budget is not None and status.budget.waiting_since is None:
        # A merge patch keeps a field it does not name: an ended wait must be cleared explicitly.
        document["budget"]["waitingSince"] = None
    await op.kube.merge_patch(constants.KIND, owner.namespace, owner.name, {"status": document}, subresource="status")
    op.metrics.status_writes_total.inc()


def post_events(body: kopf.Body, events: Iterable[EventNote]) -> None:
    for note in events:
        kopf.event(body, type=note.type, reason=note.reason, message=note.message)


async def create_or_adopt(op: OperatorContext, obj: Mapping[str, Any], owner: children.RunOwner) -> bool:
    """Create the object; when it exists (409), adopt it if it is this run's. Returns True if created."""
    try:
        await op.kube.create(obj)
        return True
    except ApiError as error:
        if not error.conflict:
            raise
    meta = obj["metadata"]
    existing = await op.kube.get(obj["kind"], meta["namespace"], meta["name"])
    owners = {ref.get("uid") for ref in existing.get("metadata", {}).get("ownerReferences") or []}
    if owner.uid in owners:
        return False
    if existing.get("metadata", {}).get("deletionTimestamp"):
        raise kopf.TemporaryError(f"{obj['kind']} {meta['name']} from an earlier run is being deleted", delay=2)
    raise kopf.TemporaryError(
        f"{obj['kind']} {meta['name']} exists and does not belong to this AgentRun; delete or rename it",
        delay=op.settings.retry_delay_seconds,
    )


async def _secret_problem(op: OperatorContext, namespace: str, name: str, key: str) -> str | None:
    """What is wrong with the Secret a run reads a key from, or None. Names keys only, never values."""
    try:
        secret = await op.kube.get("Secret", namespace, name)
    except ApiError as error:
        if error.not_found:
            return f"Secret {name!r} not found in namespace {namespace!r}"
        raise
    keys = sorted((secret.get("data") or {}).keys())
    if key in keys:
        return None
    return f"Secret {name!r} has no key {key!r} (its keys: {', '.join(keys) or 'none'})"


async def _missing_prerequisite(
    op: OperatorContext, owner: children.RunOwner, spec: AgentRunSpec
) -> tuple[str, str] | None:
    """A Secret or StorageClass the run needs and cannot have yet: (reason, what is missing, on its field)."""
    ref = spec.model.api_key_secret_ref
    if ref is not None:
        problem = await _secret_problem(op, owner.namespace, ref.name, ref.key)
        if problem is not None:
            return c.REASON_SECRET_NOT_FOUND, f"spec.model.apiKeySecretRef: {problem}"
    storage_class = spec.checkpoint.storage_class_name
    if (
        spec.checkpoint.store == "PersistentVolumeClaim"
        and storage_class
        and not await op.kube.storage_class_exists(storage_class)
    ):
        return (
            c.REASON_STORAGE_CLASS_NOT_FOUND,
            f"spec.checkpoint.storageClassName: StorageClass {storage_class!r} does not exist",
        )
    return None


def prerequisite_grace_seconds(settings: OperatorSettings, max_execution_seconds: float) -> float:
    """How long after its creation a run waits for a missing prerequisite: the operator's grace, at most the
    run's maxExecutionTime (a run must not outlive its own time limit waiting to start)."""
    return min(settings.prerequisite_grace_seconds, max_execution_seconds)


def _created_at(body: Mapping[str, Any]) -> datetime | None:
    created = (body.get("metadata") or {}).get("creationTimestamp")
    if isinstance(created, datetime):
        return created
    return datetime.fromisoformat(created) if isinstance(created, str) and created else None


async def _end_at_admission(
    body: kopf.Body, op: OperatorContext, status: AgentRunStatus, reason: str, message: str, generation: int
) -> None:
    """The run can never be admitted: a terminal Failed phase naming why, its condition and an Event."""
    owner = children.RunOwner.from_body(body)
    now = op.clock()
    status.phase = Phase.FAILED
    status.reason = reason
    status.message = message
    status.completion_time = now
    set_condition(status, c.ACCEPTED, False, reason, message, now=now, generation=generation)
    set_condition(status, c.FAILED, True, reason, message, now=now, generation=generation)
    await write_status(op, owner, status)
    kopf.warn(body, reason=reason, message=message)
    op.record_phase((owner.namespace, owner.name), Phase.FAILED)


def _record_route(
    status: AgentRunStatus, route: run_route.RunRoute, missing_apis: list[str], *, now: datetime, generation: int
) -> None:
    """status.streamRoute and the StreamRouteReady condition: where the run's own route serves its stream."""
    status.stream_route = StreamRoute(
        controller=route.controller, host=route.host, path=run_route.EVENTS_PATH, objects=route.names
    )
    if missing_apis:
        message = (
            f"spec.streaming.ingress: the cluster does not serve {', '.join(missing_apis)}, which "
            f"{route.controller} routes with; install {route.controller} (its CRDs) or remove spec.streaming.ingress "
            "to read the stream through the shared stream gateway route"
        )
        set_condition(
            status, c.STREAM_ROUTE_READY, False, c.REASON_ROUTE_API_MISSING, message, now=now, generation=generation
        )
        return
    message = f"{', '.join(route.names)} serve the run's stream at {route.host}{run_route.EVENTS_PATH}"
    set_condition(status, c.STREAM_ROUTE_READY, True, c.REASON_ROUTE_CREATED, message, now=now, generation=generation)


async def admit(body: kopf.Body, op: OperatorContext, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """Parse the spec, create (or adopt) the run's children, mark it Accepted. Safe to run again."""
    owner = children.RunOwner.from_body(body)
    current = read_status(body)
    if current.phase is not None and current.phase.terminal:
        return  # an ended run keeps what it has; its TTL may have removed the Job on purpose
    generation = int(body.get("metadata", {}).get("generation") or 0)
    now = op.clock()
    status = current.model_copy(deep=True)
    status.observed_generation = generation
    name_problem = run_name_problem(owner.name)
    if name_problem is not None:
        await _end_at_admission(body, op, status, c.REASON_INVALID_NAME, name_problem, generation)
        raise kopf.PermanentError(name_problem)
    try:
        spec = parse_spec(body)
        policy.enforce(spec, op.settings.policy)
        refused = run_route.refusal(spec)
        if refused is not None:
            # Admission only: a run an earlier operator version accepted is never admitted again, and keeps running.
            raise InvalidSpecError(refused)
    except (InvalidSpecError, policy.PolicyViolationError) as error:
        message = str(error)[:1024]
        reason = error.reason if isinstance(error, policy.PolicyViolationError) else c.REASON_INVALID_SPEC
        await _end_at_admission(body, op, status, reason, message, generation)
        raise kopf.PermanentError(message) from None

    budget = compute_budget(spec, clock_start=current.budget.clock_start_time if current.budget else None)
    status.budget = budget.to_status()
    status.job_name = children.job_name(owner.name)
    status.stream_url = stream_url(owner, spec, op.settings)
    status.progress = status.progress or f"{status.iteration}/{spec.max_iterations}"
    status.phase = status.phase or Phase.PENDING
    status.reason = status.reason or c.REASON_PENDING
    set_condition(
        status,
        c.BUDGET_FITS,
        budget.fits,
        c.REASON_BUDGET_FITS if budget.fits else c.REASON_BUDGET_EXCEEDS,
        budget.explain(),
        now=now,
        generation=generation,
    )
    chain = check_stream_chain(owner.name, spec, op.settings.stream_controller)
    if chain is not None:
        status.budget.stream_controller = chain.controller  # `kubectl agentrun budget` shows the same chain
        earlier = condition_of(current, c.STREAM_CHAIN_FITS)
        set_condition(
            status,
            c.STREAM_CHAIN_FITS,
            chain.fits,
            chain.reason,
            chain.condition_message(),
            now=now,
            generation=generation,
        )
        if not chain.fits and (earlier is None or earlier.status != "False"):
            kopf.warn(body, reason=chain.reason, message=chain.event_message())

    missing = await _missing_prerequisite(op, owner, spec)
    tools = run_tools.NO_TOOLS
    if missing is None:
        try:
            tools = await run_tools.run_tools(op.kube, owner.namespace, owner.name, spec, op.settings.policy)
        except run_tools.ToolServerNotReadyError as error:
            missing = c.REASON_MCP_SERVER_NOT_READY, str(error)
        except (run_tools.ToolsInvalidError, policy.PolicyViolationError) as error:
            message = str(error)[:1024]
            reason = error.reason if isinstance(error, policy.PolicyViolationError) else c.REASON_INVALID_SPEC
            await _end_at_admission(body, op, status, reason, message, generation)
            raise kopf.PermanentError(message) from None
    if missing is not None:
        reason, problem = missing
        grace = prerequisite_grace_seconds(op.settings, budget.max_execution_seconds)
        created_at = _created_at(body)
        waited = (now - created_at).total_seconds() if created_at is not None else 0.0
        if waited >= grace:
            message = f"{problem}; still missing {waited:.0f}s after the run was created (grace {grace:.0f}s)"
            await _end_at_admission(body, op, status, reason, message[:1024], generation)
            raise kopf.PermanentError(message)
        message = f"{problem}; create it and the run starts (it fails if still missing {grace:.0f}s after creation)"
        status.message = message
        status.reason = reason
        set_condition(status, c.ACCEPTED, False, reason, message, now=now, generation=generation)
        if status != current:
            await write_status(op, owner, status)
            kopf.warn(body, reason=reason, message=message)
        raise kopf.TemporaryError(message, delay=min(op.settings.retry_delay_seconds, max(grace - waited, 0.1)))

    accepted = condition_of(current, c.ACCEPTED)
    already_accepted = accepted is not None and accepted.status == "True"
    # The wall clock of maxExecutionTime starts once, at acceptance; an older status without it started then.
    clock_start = budget.clock_start or (accepted.last_transition_time if already_accepted and accepted else now)
    deadline = budget.deadline_from(clock_start)
    status.budget.clock_start_time, status.budget.deadline = clock_start, deadline
    objects = children.build_children(
        owner,
        spec,
        op.settings,
        stream_token=secrets.token_urlsafe(32),
        permit_key=secrets.token_urlsafe(32),
        deadline=deadline,
        now=now,
        tools=tools,
    )
    route = children.run_route(owner, spec)
    route_kinds = {obj["kind"] for obj in route.objects} if route else set()
    missing_route_api: list[str] = []
    created: list[str] = []
    for obj in objects:
        if obj["kind"] == "Job" and already_accepted:
            continue  # a lost Job is the supervisor's to replace, counting the restart
        try:
            if await create_or_adopt(op, obj, owner):
                created.append(f"{obj['kind']}/{obj['metadata']['name']}")
        except ApiError as error:
            if error.not_found and obj["kind"] in route_kinds:
                missing_route_api.append(f"{obj['kind']} ({obj['apiVersion']})")
                continue
            if error.status != 422:
                raise
            # Invalid now is invalid on every retry: end the run, saying which child and why.
            message = f"the API server rejected {obj['kind']} {obj['metadata']['name']}: {error.message}"[:1024]
            await _end_at_admission(body, op, status, c.REASON_CHILD_REJECTED, message, generation)
            raise kopf.PermanentError(message) from None
    if route is not None:
        _record_route(status, route, missing_route_api, now=now, generation=generation)

    set_condition(
        status, c.ACCEPTED, True, c.REASON_CREATED, "the run's Job and companions exist", now=now, generation=generation
    )
    if not already_accepted:
        # What the supervisor's first look says of a run whose pod does not run yet, said in this write
        # already: that look then finds nothing to write (it was a second status write per run).
        status.message = WAITING_FOR_POD
        set_condition(status, c.RUNNING, False, c.REASON_PENDING, WAITING_FOR_POD, now=now, generation=generation)
    if status != current:
        await write_status(op, owner, status)
    if created:
        kopf.info(body, reason=c.REASON_CREATED, message=f"created {', '.join(created)}")
    if not budget.fits and current.budget is None:
        kopf.warn(body, reason=c.REASON_BUDGET_EXCEEDS, message=budget.explain())
    logger.info("run admitted: %s", ", ".join(created) or "all children already existed")
    op.record_phase((owner.namespace, owner.name), status.phase)
    op.wake((owner.namespace, owner.name))


Lookup = Callable[[RunKey], Iterable[Any]]


async def _woken(wake: asyncio.Event, seconds: float) -> bool:
    """Wait for the wake event at most ``seconds``; whether it came."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(seconds, 0.01)):
            await wake.wait()
    return wake.is_set()


class Supervisor:
    """One per run, for the life of the run: mirrors observations into the status and acts on them."""

    def __init__(
        self,
        body: kopf.Body,
        op: OperatorContext,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        *,
        jobs: Lookup,
        pods: Lookup,
        progress: Lookup,
        approvals: Lookup | None = None,
        on_status_read: Callable[[], None] | None = None,
    ) -> None:
        self.body = body  # kopf's live view: always the latest seen object
        # Told once the supervisor has read the run's status from the body and keeps its own copy from then on.
        self._on_status_read = on_status_read
        self.op = op
        self.logger = logger
        self.owner = children.RunOwner.from_body(body)
        self.key: RunKey = (self.owner.namespace, self.owner.name)
        self._jobs, self._pods, self._progress = jobs, pods, progress
        self._approvals: Lookup = approvals or (lambda _key: ())
        self._status: AgentRunStatus | None = read_status(body)
        self._packed_status = b""  # the status encoded, while ``_status`` is None
        self.last_write: datetime | None = None
        self.clock_reset_at: datetime | None = None
        self.last_report_pod = ""
        self.ttl_done = False
        self.deferred_events: list[EventNote] = []
        self.companions_checked_at: datetime | None = None
        self.progress_seen = False  # the watch has shown the progress ConfigMap: its absence then means deleted

    @property
    def status(self) -> AgentRunStatus:
        """The run's status as this supervisor last wrote or read it."""
        if self._status is None:
            self._status = AgentRunStatus.model_validate_json(self._packed_status)
            self._packed_status = b""
        return self._status

    @status.setter
    def status(self, value: AgentRunStatus) -> None:
        self._status, self._packed_status = value, b""

    def pack_status(self) -> None:
        """Keep the status encoded until the next look (``PACK_STATUS_AFTER_SECONDS``)."""
        if self._status is not None:
            self._packed_status = self._status.model_dump_json(by_alias=True).encode()
            self._status = None

    def observe(self) -> Observed:
        jobs = [j for j in self._jobs(self.key) if isinstance(j, JobObservation) and not j.deleting]
        job = max(jobs, key=lambda j: j.created.timestamp() if j.created else 0.0, default=None)
        if job is None:
            job = next((j for j in self._jobs(self.key) if isinstance(j, JobObservation)), None)
        pods = tuple(p for p in self._pods(self.key) if isinstance(p, PodObservation))
        progress = next((p for p in self._progress(self.key) if isinstance(p, ProgressObservation)), None)
        decided = tuple(a for a in self._approvals(self.key) if isinstance(a, ApprovalObservation))
        return Observed(job=job, pods=pods, progress=progress, approvals=decided)

    async def run(self, stopped: Any) -> None:
        wake = self.op.wakes.setdefault(self.key, asyncio.Event())
        try:
            while not stopped and not is_accepted(self.body):
                # Acceptance always comes with a wake (admit's own, and the AgentRun event of its status
                # write): no polling meanwhile, which cost every queued run a status parse per interval.
                await self._sleep(wake, stopped, ACCEPTANCE_FALLBACK_SECONDS)
            self.status = read_status(self.body)
            accepted = condition_of(self.status, c.ACCEPTED)
            self.clock_reset_at = accepted.last_transition_time if accepted is not None else None
            if self._on_status_read is not None:
                self._on_status_read()
            while not stopped:
                try:
                    sleep = await self.step()
                except (ApiError, aiohttp.ClientError, TimeoutError) as error:
                    self.op.metrics.reconcile_errors_total.labels(handler="supervise").inc()
                    self.logger.warning("supervising the run failed, retrying: %s", error)
                    retry_after = error.retry_after if isinstance(error, ApiError) else None
                    sleep = retry_after or min(self.op.settings.supervise_interval_seconds, 2.0)
                if sleep is None:
                    return
                await self._sleep(wake, stopped, sleep)
        finally:
            if self.op.wakes.get(self.key) is wake:  # not a successor's, for a run created again
                del self.op.wakes[self.key]

    async def _sleep(self, wake: asyncio.Event, stopped: Any, seconds: float) -> None:
        """Until a child changes, the run is stopped, or the time is up, whichever comes first.

        Whoever stops the run sets ``stopped`` and then the run's wake event, so one wait covers both:
        no helper task per sleeping run (thousands of runs sleep at any time)."""
        if not stopped:
            if seconds > PACK_STATUS_AFTER_SECONDS:
                seconds -= PACK_STATUS_AFTER_SECONDS
                if not await _woken(wake, PACK_STATUS_AFTER_SECONDS):
                    self.pack_status()
            await _woken(wake, seconds)
        wake.clear()

    async def step(self) -> float | None:
        """One look at the run. Returns seconds until the next look, or None when nothing is left to do."""
        try:
            spec = parse_spec(self.body)
        except InvalidSpecError:
            return None  # admission recorded it as Failed
        if self.status.reason == policy.REASON_POLICY_VIOLATION:
            return None  # refused at admission: nothing of it ran, nobody is notified (as for an invalid spec)
        settings, now = self.op.settings, self.op.clock()
        ctx = RunContext(
            owner=self.owner,
            generation=int(self.body.get("metadata", {}).get("generation") or 0),
            spec=spec,
            settings=settings,
            now=now,
            clock_reset_at=self.clock_reset_at,
            previous_report_pod=self.last_report_pod,
            job_deleted_for_ttl=self.ttl_done,
        )
        observed = self.observe()
        if self.status.phase is None or not self.status.phase.terminal:
            # Not yet seen is not missing: the watch may not have delivered the ConfigMap admission just made.
            progress_deleted = self.progress_seen and observed.progress is None
            await self._restore_companions(spec, now, progress_missing=progress_deleted)
            self.progress_seen = observed.progress is not None  # after a failed restore, the next step retries
        decision = decide(self.status, observed, ctx)
        for action in decision.actions:
            await self._act(action, spec, now)
        report = observed.report_for(self.owner.uid)
        if report is not None and report.pod != self.last_report_pod:
            if report.resumed_from_iteration is not None:
                self.op.metrics.resumes_total.inc()
            self.last_report_pod = report.pod
        post_events(self.body, decision.events)

        waits = [settings.supervise_interval_seconds]
        if decision.recheck_after is not None:
            waits.append(decision.recheck_after)
        urgency = write_urgency(self.status, decision.status)
        if urgency is Urgency.PROGRESS and self.last_write is not None:
            due = self.last_write + timedelta(seconds=settings.status_min_interval_seconds)
            if now < due:
                waits.append((due - now).total_seconds())
                urgency = Urgency.NONE
        if urgency is not Urgency.NONE:
            await self._write(decision.status, spec, now)

        if spec.completion_webhook is not None and approvals.pending(self.status):
            request_wait = await self._notify_approval_requests(spec)
            if request_wait is not None:
                waits.append(request_wait)
        if self.status.phase is not None and self.status.phase.terminal:
            webhook_wait = await self._notify(spec)
            if webhook_wait is not None:
                waits.append(webhook_wait)
            ttl_pending = spec.ttl_seconds_after_finished is not None and not self.ttl_done and observed.job is not None
            if webhook_wait is None and not ttl_pending and decision.recheck_after is None:
                return None
        return min(waits)

    async def _write(self, new: AgentRunStatus, spec: AgentRunSpec, now: datetime) -> None:
        old = self.status
        await write_status(self.op, self.owner, new)
        self.status, self.last_write = new, now
        post_events(self.body, transition_events(old, new, spec))
        self.op.record_phase(self.key, new.phase)
        if new.restarts > old.restarts:
            self.op.metrics.restarts_total.inc(new.restarts - old.restarts)
        if new.phase is not None and new.phase.terminal and old.phase != new.phase:
            started = new.start_time or self.body.get("metadata", {}).get("creationTimestamp")
            if isinstance(started, datetime) and new.completion_time is not None:
                self.op.metrics.run_duration_seconds.observe((new.completion_time - started).total_seconds())
            self.op.metrics.run_iterations.observe(new.iteration)
            self.op.metrics.queue_wait_seconds.observe(new.queue_wait.max_seconds)

    async def _act(self, action: object, spec: AgentRunSpec, now: datetime) -> None:
        ns, job = self.owner.namespace, children.job_name(self.owner.name)
        if isinstance(action, SetJobSuspended):
            patch: dict[str, Any] = {"suspend": action.suspend}
            deadline = run_deadline(self.status, spec)
            if not action.suspend and deadline is not None:
                # A resumed Job's deadline timer starts again: give it only the budget left.
                patch["activeDeadlineSeconds"] = seconds_left(deadline, now)
            await self.op.kube.merge_patch("Job", ns, job, {"spec": patch})
            if not action.suspend:
                self.clock_reset_at = now
        elif isinstance(action, DeletePod):
            await self.op.kube.delete("Pod", ns, action.name)
            self.clock_reset_at = now
        elif isinstance(action, RecreateJob):
            # The new Job's hard deadline is the budget left, never a fresh maxExecutionTime.
            deadline = run_deadline(self.status, spec) or now + timedelta(
                seconds=compute_budget(spec).max_execution_seconds
            )
            obj = children.adopted(
                children.build_job(
                    self.owner,
                    spec,
                    self.op.settings,
                    deadline=deadline,
                    now=now,
                    restarts_before=action.restarts_before,
                    tools=await run_tools.run_tools(self.op.kube, ns, self.owner.name, spec, self.op.settings.policy),
                ),
                self.owner,
            )
            try:
                await self.op.kube.create(obj)
            except ApiError as error:
                if not error.conflict:
                    raise
            self.clock_reset_at = now
        elif isinstance(action, RemoveJobWhileWaiting):
            await self.op.kube.delete("Job", ns, job, propagation="Background")
        elif isinstance(action, ResumeAfterApproval):
            await self._resume_after_approval(action, spec, now)
        elif isinstance(action, DeleteJob):
            await self.op.kube.delete("Job", ns, job, propagation="Background")
            self.ttl_done = True
            kopf.info(
                self.body,
                reason="Cleaned",
                message=f"ttlSecondsAfterFinished passed: deleted Job {job} and its pods; the result stays in status.result",
            )

    async def _resume_after_approval(self, action: ResumeAfterApproval, spec: AgentRunSpec, now: datetime) -> None:
        """The decisions into the runner's config (its approvals file), then the Job that resumes the run."""
        decisions = [d.model_dump(mode="json", by_alias=True) for d in action.decisions]
        await self.op.kube.merge_patch(
            "ConfigMap",
            self.owner.namespace,
            contract.runner_config_name(self.owner.name),
            {"data": {contract.APPROVALS_FILE: json.dumps(decisions)}},
        )
        obj = children.adopted(
            children.build_job(
                self.owner,
                spec,
                self.op.settings,
                deadline=action.deadline,
                now=now,
                restarts_before=action.restarts_before,
            ),
            self.owner,
        )
        try:
            await self.op.kube.create(obj)
        except ApiError as error:
            if not error.conflict:
                raise
            existing = await self.op.kube.get("Job", self.owner.namespace, children.job_name(self.owner.name))
            if existing.get("metadata", {}).get("deletionTimestamp"):
                raise  # the stopped runner's Job is still going: the status is not written, the next step retries
        self.clock_reset_at = now

    async def _notify_approval_requests(self, spec: AgentRunSpec) -> float | None:
        """A signed POST to the run's webhook for each call that starts waiting (the completion webhook's URL,
        key and retries); returns seconds until a retry is due, or None."""
        hook = spec.completion_webhook
        if hook is None:
            return None
        now = self.op.clock()
        new = self.status.model_copy(deep=True)
        waits: list[float] = []
        changed = False
        for entry in approvals.pending(new):
            note = entry.notification or Notification(
                event_id=webhook.event_id(self.owner.uid, f"approval/{entry.call}")
            )
            attempt = await self._attempt_delivery(
                hook,
                note,
                functools.partial(
                    webhook.approval_payload, self.owner.namespace, self.owner.name, self.owner.uid, entry
                ),
                now,
            )
            if isinstance(attempt, Notification):
                entry.notification, changed = attempt, True
                attempt = self._retry_in(hook, attempt)
            if attempt is not None:
                waits.append(attempt)
        if changed:
            await write_status(self.op, self.owner, new)
            self.status, self.last_write = new, now
        return min(waits, default=None)

    async def _restore_companions(self, spec: AgentRunSpec, now: datetime, *, progress_missing: bool) -> None:
        """Create again any companion of the live run that was deleted: the progress ConfigMap as soon as the
        watch shows it gone (the runner's outcome goes there), every companion once per check interval."""
        if self.companions_checked_at is None:
            self.companions_checked_at = now  # admission has just made them: no burst of reads at start-up
        interval = timedelta(seconds=self.op.settings.companion_check_interval_seconds)
        due = now - self.companions_checked_at >= interval
        if not due and not progress_missing:
            return
        if due:
            self.companions_checked_at = now
        config_name = contract.runner_config_name(self.owner.name)
        skipped: str | None = None
        try:
            tools = await run_tools.run_tools(
                self.op.kube, self.owner.namespace, self.owner.name, spec, self.op.settings.policy
            )
        except (run_tools.ToolServerNotReadyError, run_tools.ToolsInvalidError, policy.PolicyViolationError) as error:
            # The runner config cannot be made again without its tools; the rest can.
            self.logger.warning("run's tools cannot be resolved again (%s); its runner config is not restored", error)
            tools, skipped = run_tools.NO_TOOLS, config_name
        companions = children.build_companions(
            self.owner,
            spec,
            self.op.settings,
            stream_token=secrets.token_urlsafe(32),
            permit_key=secrets.token_urlsafe(32),
            tools=tools,
        )
        companions = [o for o in companions if o["metadata"]["name"] != skipped or o["kind"] != "ConfigMap"]
        if not due:
            progress = contract.progress_name(self.owner.name)
            companions = [o for o in companions if o["kind"] == "ConfigMap" and o["metadata"]["name"] == progress]
        restored: list[str] = []
        for obj in companions:
            meta = obj["metadata"]
            try:
                await self.op.kube.get(obj["kind"], meta["namespace"], meta["name"])
                continue
            except ApiError as error:
                if not error.not_found:
                    raise
            try:
                await self.op.kube.create(obj)
            except ApiError as error:
                if not error.conflict:  # made meanwhile (by the runner, for its progress ConfigMap): fine
                    raise
                continue
            restored.append(f"{obj['kind']}/{meta['name']}")
        if restored:
            message = f"created again after it was deleted: {', '.join(restored)}"
            self.logger.warning("%s", message)
            kopf.warn(self.body, reason=c.REASON_COMPANION_RESTORED, message=message)

    async def _notify(self, spec: AgentRunSpec) -> float | None:
        """Deliver the completion webhook; returns seconds until the next attempt, or None when done."""
        hook = spec.completion_webhook
        if hook is None or self.status.phase is None:
            return None
        note = self.status.notification or Notification(
            event_id=webhook.event_id(self.owner.uid, self.status.phase.value)
        )
        now = self.op.clock()
        status = self.status
        attempt = await self._attempt_delivery(
            hook,
            note,
            lambda event_id: webhook.payload(self.owner.namespace, self.owner.name, self.owner.uid, status, event_id),
            now,
        )
        if not isinstance(attempt, Notification):
            return attempt
        note = attempt
        new = self.status.model_copy(deep=True)
        new.notification = note
        generation = int(self.body.get("metadata", {}).get("generation") or 0)
        if note.delivered:
            set_condition(
                new,
                c.NOTIFIED,
                True,
                c.REASON_DELIVERED,
                f"delivered to the completion webhook on attempt {note.attempts}",
                now=now,
                generation=generation,
            )
        else:
            left = hook.max_attempts - note.attempts
            message = f"attempt {note.attempts} of {hook.max_attempts} failed: {note.last_error}" + (
                "" if left else "; giving up"
            )
            set_condition(new, c.NOTIFIED, False, c.REASON_DELIVERY_FAILED, message, now=now, generation=generation)
            if not left:
                kopf.warn(self.body, reason=c.REASON_DELIVERY_FAILED, message=message)
        await write_status(self.op, self.owner, new)
        self.status, self.last_write = new, now
        if note.delivered:
            kopf.info(self.body, reason=c.REASON_DELIVERED, message="completion webhook delivered")
        return self._retry_in(hook, note)

    def _backoff(self, attempts: int) -> float:
        settings = self.op.settings
        return webhook.backoff_seconds(
            attempts, base=settings.webhook_backoff_seconds, cap=settings.webhook_backoff_max_seconds
        )

    def _retry_in(self, hook: CompletionWebhookSpec, note: Notification) -> float | None:
        """Seconds until the next attempt after ``note``'s last, or None when delivered or out of attempts."""
        if note.delivered or note.attempts >= hook.max_attempts:
            return None
        return self._backoff(note.attempts)

    async def _attempt_delivery(
        self,
        hook: CompletionWebhookSpec,
        note: Notification,
        body_of: Callable[[str], bytes],
        now: datetime,
    ) -> Notification | float | None:
        """One signed POST of ``body_of(event id)`` to the run's webhook when ``note`` is due one: the note after
        the attempt; else the seconds until it is due, or None when it was delivered or is out of attempts."""
        if note.delivered or note.attempts >= hook.max_attempts:
            return None
        if note.last_attempt_time is not None:
            due = note.last_attempt_time + timedelta(seconds=self._backoff(note.attempts))
            if now < due:
                return (due - now).total_seconds()
        settings = self.op.settings
        ref = hook.signing_key_secret_ref
        key = await self.op.kube.read_secret_key(self.owner.namespace, ref.name, ref.key)
        if key is None:
            result = webhook.DeliveryResult(
                ok=False, error=f"signing key Secret {ref.name!r} (key {ref.key!r}) not found"
            )
        else:
            result = await webhook.deliver(
                self.op.http,
                hook.url,
                key,
                body_of(note.event_id),
                note.event_id,
                now=now,
                timeout_seconds=settings.webhook_timeout_seconds,
                host_allowed=settings.policy.webhook_host_allowed(hook.url),
            )
        return note.model_copy(
            update={
                "attempts": note.attempts + 1,
                "last_attempt_time": now,
                "delivered": result.ok,
                "last_error": result.error,
            }
        )
