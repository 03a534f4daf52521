"""kubectl-agentrun: follow, inspect and steer AgentRuns from a terminal (`kubectl agentrun <command> <run>`).

It talks to the cluster with the official Kubernetes client and the user's own kubeconfig and identity, so it can
do exactly what the user's RBAC allows. Commands that change a run (suspend, resume, cancel) merge-patch the
user's own spec fields, never status; approve and deny create an AgentRunApproval in the user's own name (which
admission checks). Every failure is one line on stderr naming what to do, never a traceback.
"""

import argparse
import base64
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO, cast, get_args

import httpx
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from agentrun_api import approval, constants, contract
from agentrun_api.spec import AgentRunSpec, IngressController
from agentrun_api.status import TERMINAL_PHASES
from agentrun_common.durations import format_duration, parse_duration
from agentrun_common.sse import SseEvent, SseParser, SseTooLargeError
from agentrun_common.stream_timeouts import Hop, StreamBudget, format_chain_table, stream_chain

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a Unix tool whose reader went away

# The stream: seconds before the first reconnect when the server sent no `retry:` field, the cap on any wait,
# and how many reconnects in a row may bring no new event before the plugin gives up.
DEFAULT_RECONNECT_SECONDS = 1.0
MAX_RECONNECT_SECONDS = 30.0
DEFAULT_MAX_RECONNECTS = 20
# Seconds to wait for the stream's response headers or the next byte; heartbeats arrive well inside this.
STREAM_READ_TIMEOUT_SECONDS = 120.0
FINISHED_EVENT = "finished"


class PluginError(Exception):
    """A failure the user can act on; printed as one line, without a traceback."""


class Target:
    """The cluster connection and the namespace a command works in, connected on first use (as kubectl does:
    the kubeconfig from the flag, KUBECONFIG or ~/.kube/config, a context, a namespace), so a command that
    needs no API server (stream with --url and --token) needs no kubeconfig either."""

    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
        self._kubeconfig = kubeconfig
        self._context = context
        self._namespace = namespace

    @functools.cached_property
    def _connection(self) -> tuple[client.ApiClient, str]:
        try:
            contexts, current = config.list_kube_config_contexts(config_file=self._kubeconfig)  # type: ignore[no-untyped-call]
            chosen = next((c for c in contexts if c["name"] == self._context), None) if self._context else current
            if chosen is None:
                raise PluginError(
                    f"context {self._context!r} is not in the kubeconfig; `kubectl config get-contexts` lists them"
                )
            api = config.new_client_from_config(config_file=self._kubeconfig, context=chosen["name"])  # type: ignore[no-untyped-call]
        except config.ConfigException as error:
            raise PluginError(f"cannot load the kubeconfig: {error}") from None
        except OSError as error:
            raise PluginError(f"cannot read the kubeconfig: {error}") from None
        return api, self._namespace or chosen["context"].get("namespace") or "default"

    @property
    def api(self) -> client.ApiClient:
        return self._connection[0]

    @property
    def namespace(self) -> str:
        return self._connection[1]


def api_error(error: ApiException, what: str, namespace: str) -> PluginError:
    """One clear line for an API failure: what was wanted, and the API server's own words."""
    try:
        message = json.loads(error.body or "{}").get("message") or error.reason
    except (ValueError, AttributeError):
        message = error.reason
    if error.status == 404:
        return PluginError(f"{what} not found in namespace {namespace}")
    if error.status in (401, 403):
        return PluginError(f"not allowed to read or change {what} in namespace {namespace}: {message}")
    return PluginError(f"{what}: the API server answered {error.status}: {message}")


def get_run(target: Target, name: str) -> dict[str, Any]:
    objects = client.CustomObjectsApi(target.api)
    try:
        run = objects.get_namespaced_custom_object(
            constants.GROUP, constants.VERSION, target.namespace, constants.PLURAL, name
        )
    except ApiException as error:
        raise api_error(error, f"agentrun {name}", target.namespace) from None
    return cast(dict[str, Any], run)


# --- logs ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunnerPod:
    """What the logs command needs of a runner pod."""

    name: str
    created: datetime
    started: datetime | None
    phase: str
    restarted: bool  # a container restarted in place, so the pod also has a previous log

    @classmethod
    def from_api(cls, pod: client.V1Pod) -> "RunnerPod":
        metadata = pod.metadata or client.V1ObjectMeta()
        status = pod.status or client.V1PodStatus()
        return cls(
            name=metadata.name or "",
            created=metadata.creation_timestamp or datetime.min.replace(tzinfo=UTC),
            started=status.start_time,
            phase=status.phase or "Unknown",
            restarted=any(c.restart_count for c in status.container_statuses or []),
        )


def pod_header(pod: RunnerPod) -> str:
    started = pod.started.isoformat() if pod.started else "not started"
    return f"==> pod {pod.name} (started {started}, {pod.phase}) <=="


def oldest_first(pods: Iterable[RunnerPod]) -> list[RunnerPod]:
    """Each replaced pod resumed where the one before it stopped, so creation order is the run's order; creation
    times have whole seconds only, so the start time breaks a tie (a pod not started yet comes last)."""
    never = datetime.max.replace(tzinfo=UTC)
    return sorted(pods, key=lambda pod: (pod.created, pod.started or never, pod.name))


def runner_pods(target: Target, run: str) -> list[RunnerPod]:
    core = client.CoreV1Api(target.api)
    try:
        pods = core.list_namespaced_pod(target.namespace, label_selector=f"{constants.LABEL_RUN}={run}").items
    except ApiException as error:
        raise api_error(error, f"the pods of agentrun {run}", target.namespace) from None
    return oldest_first(RunnerPod.from_api(pod) for pod in pods)


def command_logs(target: Target, args: argparse.Namespace, out: TextIO) -> int:
    get_run(target, args.run)
    pods = runner_pods(target, args.run)
    if not pods:
        out.write(
            f"agentrun {args.run} has no runner pods: not started yet, or its Job was deleted "
            "(spec.ttlSecondsAfterFinished)\n"
        )
        return EXIT_OK
    core = client.CoreV1Api(target.api)
    for pod in pods:
        out.write(pod_header(pod) + "\n")
        for previous in (True, False) if pod.restarted else (False,):
            try:
                text = core.read_namespaced_pod_log(pod.name, target.namespace, previous=previous)
            except ApiException as error:
                if error.status in (400, 404):  # no log yet, or no earlier container to show
                    out.write(f"({'previous ' if previous else ''}log not available: {error.reason})\n")
                    continue
                raise api_error(error, f"the log of pod {pod.name}", target.namespace) from None
            out.write(text if text.endswith("\n") or not text else text + "\n")
    return EXIT_OK


# --- stream -------------------------------------------------------------------------------------------------------


def format_event(event: SseEvent) -> str:
    """One line per event (multi-line data stays indented under it): `[id] type data`."""
    data = event.data.replace("\n", "\n    ")
    return f"[{event.id if event.id is not None else '-'}] {event.event} {data}"


def write_events(events: list[SseEvent], out: TextIO) -> bool:
    """Print each event on its line; whether the last was the run's `finished`."""
    for event in events:
        out.write(format_event(event) + "\n")
        out.flush()
        if event.event == FINISHED_EVENT:
            return True
    return False


def follow_stream(
    url: str,
    token: str | None,
    out: TextIO,
    *,
    last_event_id: str | None = None,
    max_reconnects: int = DEFAULT_MAX_RECONNECTS,
    sleep: Callable[[float], None] = time.sleep,
    run_phase: Callable[[], str | None] = lambda: None,
    unreachable_hint: str = "pass --url with an address this machine reaches",
) -> int:
    """Print a run's events until `finished`; reconnect with Last-Event-ID whenever the connection drops.

    ``run_phase`` tells, before each connection, the run's phase when it can be read. A run that has ended
    is not followed but replayed once: what its stream still serves is printed, then the command ends (0).
    An address that never answered is not retried: the error says how to reach the stream
    (``unreachable_hint``)."""
    parser = SseParser()
    parser.last_event_id = last_event_id
    failures = 0
    answered = False  # whether the address ever answered over HTTP: only then is a reconnect worth it
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    timeout = httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT_SECONDS)
    with httpx.Client(timeout=timeout) as http:
        while True:
            phase = run_phase()
            if parser.last_event_id is not None:
                headers["Last-Event-ID"] = parser.last_event_id
            problem = ""
            try:
                with http.stream("GET", url, headers=headers) as response:
                    answered = True
                    if response.status_code == 204:
                        return EXIT_OK  # the server says there is nothing more to follow
                    if response.status_code in (401, 403):
                        raise PluginError(
                            f"the stream refused the token ({response.status_code}); pass the run's stream token "
                            "with --token"
                        )
                    if response.status_code == 404:
                        raise PluginError(f"no stream at {url} (404): the run may not stream, or has ended")
                    if response.status_code != 200:
                        problem = f"HTTP {response.status_code}"
                    else:
                        for chunk in response.iter_bytes():
                            try:
                                events = parser.feed(chunk)
                            except SseTooLargeError as error:
                                write_events(error.complete, out)
                                raise PluginError(
                                    f"the stream sent {error}; this is not a run's event stream"
                                ) from None
                            if events:
                                failures = 0
                            if write_events(events, out):
                                return EXIT_OK
                        problem = "the server closed the stream"
            except httpx.TransportError as error:
                problem = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            if not answered:
                raise PluginError(f"cannot reach the stream at {url} ({problem}): {unreachable_hint}")
            if phase in TERMINAL_PHASES:
                after = f" after event {parser.last_event_id}" if parser.last_event_id is not None else ""
                sys.stderr.write(f"the run ended {phase}; its stream has nothing more{after} ({problem})\n")
                return EXIT_OK
            failures += 1
            if failures > max_reconnects:
                raise PluginError(
                    f"gave up after {max_reconnects} reconnects without a new event ({problem}); an in-cluster "
                    f"address needs `kubectl port-forward` and --url"
                )
            retry = parser.retry_ms / 1000 if parser.retry_ms else DEFAULT_RECONNECT_SECONDS * failures
            delay = min(retry, MAX_RECONNECT_SECONDS)
            resume = f" from event {parser.last_event_id}" if parser.last_event_id is not None else ""
            sys.stderr.write(f"stream interrupted ({problem}); reconnecting{resume} in {delay:g}s\n")
            sleep(delay)


def in_cluster_address(url: str) -> bool:
    """Whether the URL names a Service by its cluster DNS name, which resolves only inside the cluster."""
    host = httpx.URL(url).host
    return host.endswith(".svc") or ".svc." in host


def unreachable_hint(url: str, run: str, namespace: str) -> str:
    """What to do when the stream's address does not answer: the flag, and the setting behind the URL."""
    forward = (
        f"`kubectl port-forward -n {namespace} svc/{run}-stream {contract.STREAM_PORT}:{contract.STREAM_PORT_NAME}` "
        f"and pass --url http://127.0.0.1:{contract.STREAM_PORT}/events"
    )
    if in_cluster_address(url):
        return (
            f"that is an address inside the cluster: run {forward} (while the runner pod is up), or have the operator "
            "publish streams through the stream gateway (chart values gateway.enabled and operator.streamBaseURL) "
            f"and use its URL; `kubectl agentrun result {run}` shows an ended run's outcome"
        )
    return f"pass --url with an address this machine reaches (for example {forward})"


def stream_token(target: Target, run: str) -> str:
    """The run's stream token from its Secret, for users whose RBAC lets them read it."""
    secret_name = contract.stream_token_secret_name(run)
    try:
        secret = client.CoreV1Api(target.api).read_namespaced_secret(secret_name, target.namespace)
    except ApiException as error:
        if error.status in (401, 403, 404):
            raise PluginError(
                f"cannot read Secret {secret_name} in namespace {target.namespace} ({error.status}); "
                "pass the stream token with --token"
            ) from None
        raise api_error(error, f"Secret {secret_name}", target.namespace) from None
    encoded = (secret.data or {}).get(contract.STREAM_TOKEN_KEY)
    if not encoded:
        raise PluginError(f"Secret {secret_name} has no key {contract.STREAM_TOKEN_KEY!r}; pass --token")
    return base64.b64decode(encoded).decode()


def command_stream(target: Target, args: argparse.Namespace, out: TextIO) -> int:
    url = args.url
    if not url:
        run = get_run(target, args.run)
        url = (run.get("status") or {}).get("streamURL", "")
        if not url:
            raise PluginError(
                f"agentrun {args.run} has no status.streamURL yet: it has not started, streaming is off, or the "
                "operator has no stream base URL; use --url with a port-forward to Service "
                f"{args.run}-stream (port {contract.STREAM_PORT_NAME}) and its /events path"
            )
    token = args.token or stream_token(target, args.run)
    # With --url and --token the stream needs no API server, and none is asked (there may be no kubeconfig).
    uses_api = not (args.url and args.token)

    def run_phase() -> str | None:
        if not uses_api:
            return None
        try:
            phase = (get_run(target, args.run).get("status") or {}).get("phase")
        except (PluginError, urllib3.exceptions.HTTPError):
            return None  # not knowing the phase only means following as if the run were live
        return str(phase) if phase else None

    return follow_stream(
        url,
        token,
        out,
        last_event_id=args.last_event_id,
        max_reconnects=args.max_reconnects,
        run_phase=run_phase,
        # With --url the plugin may have no kubeconfig to name a namespace from.
        unreachable_hint=unreachable_hint(
            url, args.run, args.namespace or ("<namespace>" if args.url else target.namespace)
        ),
    )


# --- result -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultLocation:
    """Where the runner stored the full result: a ConfigMap key, or a file on the PVC checkpoint store."""

    store: str  # "configmap" or "pvc"
    name: str
    key: str  # the ConfigMap key, or the path inside the volume


def parse_result_ref(ref: str) -> ResultLocation:
    """Read `configmap/<name>#<key>` or `pvc/<claim>/<path>` (the forms status.result.ref takes)."""
    kind, _, rest = ref.partition("/")
    if kind == "configmap" and "#" in rest:
        name, _, key = rest.partition("#")
        if name and key:
            return ResultLocation("configmap", name, key)
    if kind == "pvc":
        claim, _, path = rest.partition("/")
        if claim and path:
            return ResultLocation("pvc", claim, path)
    raise PluginError(f"status.result.ref {ref!r} is neither configmap/<name>#<key> nor pvc/<claim>/<path>")


def format_result_summary(run: dict[str, Any]) -> str:
    status = run.get("status") or {}
    lines = [f"phase:    {status.get('phase') or 'not reported yet'}"]
    if status.get("reason"):
        lines.append(f"reason:   {status['reason']}")
    if status.get("message"):
        lines.append(f"message:  {status['message']}")
    usage = status.get("usage") or {}
    if usage:
        lines.append(
            f"usage:    {usage.get('totalTokens', 0)} tokens "
            f"({usage.get('promptTokens', 0)} prompt, {usage.get('completionTokens', 0)} completion)"
        )
    result = status.get("result") or {}
    if result:
        lines.append(f"stored:   {result.get('ref', '')} ({result.get('bytes', 0)} bytes)")
        lines.append("summary:")
        lines.extend("  " + line for line in (result.get("summary") or "").splitlines())
    return "\n".join(lines) + "\n"


def command_result(target: Target, args: argparse.Namespace, out: TextIO) -> int:
    run = get_run(target, args.run)
    out.write(format_result_summary(run))
    status = run.get("status") or {}
    result = status.get("result") or {}
    if not result.get("ref"):
        if status.get("phase") in TERMINAL_PHASES:
            out.write(
                f"agentrun {args.run} ended {status['phase']} without a stored result: a result is stored only "
                "with the agent's final answer\n"
            )
        else:
            out.write(f"agentrun {args.run} has no stored result yet\n")
        return EXIT_OK
    if args.summary_only:
        return EXIT_OK
    location = parse_result_ref(result["ref"])
    if location.store == "pvc":
        out.write(
            f"the full result is the file {location.key} on PersistentVolumeClaim {location.name}; read it from a "
            "pod that mounts the claim (kubectl cp, or kubectl exec ... cat)\n"
        )
        return EXIT_OK
    try:
        config_map = client.CoreV1Api(target.api).read_namespaced_config_map(location.name, target.namespace)
    except ApiException as error:
        raise api_error(error, f"ConfigMap {location.name} (the stored result)", target.namespace) from None
    text = (config_map.data or {}).get(location.key)
    if text is None:
        raise PluginError(f"ConfigMap {location.name} has no key {location.key!r}: the stored result is missing")
    out.write("result:\n" + text + ("" if text.endswith("\n") else "\n"))
    return EXIT_OK


# --- suspend, resume, cancel --------------------------------------------------------------------------------------


def patch_spec(target: Target, run: str, spec_fields: dict[str, bool]) -> dict[str, Any]:
    """Merge-patch the user's own spec fields (suspend, cancel); the operator reacts to the new generation."""
    objects = client.CustomObjectsApi(target.api)
    try:
        patched = objects.patch_namespaced_custom_object(
            constants.GROUP,
            constants.VERSION,
            target.namespace,
            constants.PLURAL,
            run,
            {"spec": spec_fields},
            _content_type="application/merge-patch+json",
        )
    except ApiException as error:
        raise api_error(error, f"agentrun {run}", target.namespace) from None
    return cast(dict[str, Any], patched)


def steering_command(
    spec_fields: dict[str, bool], verb: str, done: str
) -> Callable[[Target, argparse.Namespace, TextIO], int]:
    def command(target: Target, args: argparse.Namespace, out: TextIO) -> int:
        run = get_run(target, args.run)
        phase = (run.get("status") or {}).get("phase")
        if phase in TERMINAL_PHASES:
            raise PluginError(f"agentrun {args.run} already ended as {phase}; nothing to {verb}")
        patch_spec(target, args.run, spec_fields)
        out.write(f"{constants.SINGULAR}.{constants.GROUP}/{args.run} {done}\n")
        return EXIT_OK

    return command


# --- approve, deny -----------------------------------------------------------------------------------------------


def whoami(target: Target) -> str:
    """The user the API server authenticates this kubeconfig as (a SelfSubjectReview, as `kubectl auth whoami`)."""
    review = client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1", kind="SelfSubjectReview")
    try:
        answer = client.AuthenticationV1Api(target.api).create_self_subject_review(review)
    except ApiException as error:
        raise api_error(error, "who you are (SelfSubjectReview)", target.namespace) from None
    username = answer.status.user_info.username if answer.status and answer.status.user_info else None
    if not username:
        raise PluginError("the API server did not say who you are (SelfSubjectReview has no username)")
    return str(username)


def waiting_call(run: dict[str, Any], name: str, call: str | None) -> dict[str, Any]:
    """The waiting call to decide: the one named (its key, or iteration:index), or the only one waiting."""
    recorded: list[dict[str, Any]] = (run.get("status") or {}).get("approvals") or []
    entries = [e for e in recorded if not e.get("decision")]
    if call is not None:
        found = [e for e in entries if e.get("call") == call or str(e.get("call", "")).endswith(f":{call}")]
        if len(found) == 1:
            return found[0]
        decided = [e for e in recorded if e.get("call") == call]
        if decided:
            raise PluginError(f"call {call} of agentrun {name} was already {decided[0]['decision'].lower()}")
    elif len(entries) == 1:
        return entries[0]
    if not entries:
        phase = (run.get("status") or {}).get("phase") or "unknown"
        raise PluginError(f"agentrun {name} has no call waiting for approval (phase {phase})")
    listing = "; ".join(f"{e['call']} ({e.get('tool', '?')} {e.get('arguments', '')})" for e in entries)
    hint = "name one of them as CALL" if call is None else f"{call} is not one of them"
    raise PluginError(f"agentrun {name} has {len(entries)} call(s) waiting: {listing}; {hint}")


def decision_command(decision: str, done: str) -> Callable[[Target, argparse.Namespace, TextIO], int]:
    def command(target: Target, args: argparse.Namespace, out: TextIO) -> int:
        run = get_run(target, args.run)
        phase = (run.get("status") or {}).get("phase")
        if phase in TERMINAL_PHASES:
            raise PluginError(f"agentrun {args.run} already ended as {phase}; nothing to decide")
        entry = waiting_call(run, args.run, args.call)
        key = str(entry["call"])
        user = whoami(target)
        name = approval.approval_name(args.run, key)
        body = {
            "apiVersion": constants.API_VERSION,
            "kind": approval.KIND,
            "metadata": {
                "name": name,
                "labels": {constants.LABEL_RUN: args.run},
                # Deleted with the run; the decision stays in the run's status.approvals as long as the run.
                "ownerReferences": [
                    {
                        "apiVersion": constants.API_VERSION,
                        "kind": constants.KIND,
                        "name": args.run,
                        "uid": run["metadata"]["uid"],
                    }
                ],
            },
            "spec": {"run": args.run, "call": key, "decision": decision, "reason": args.reason, "decidedBy": user},
        }
        try:
            client.CustomObjectsApi(target.api).create_namespaced_custom_object(
                constants.GROUP, constants.VERSION, target.namespace, approval.PLURAL, body
            )
        except ApiException as error:
            if error.status == 409:
                raise PluginError(
                    f"call {key} of agentrun {args.run} is already decided ({approval.KIND} {name})"
                ) from None
            if error.status == 403:
                raise PluginError(
                    f"{user} may not decide approvals in namespace {target.namespace}: deciding needs the RBAC verb "
                    f"create on {approval.PLURAL}.{constants.GROUP} ({api_error(error, name, target.namespace)})"
                ) from None
            raise api_error(error, f"{approval.KIND} {name}", target.namespace) from None
        out.write(f"{done} {entry.get('tool', '')} call {key} of agentrun {args.run} as {user}; the run resumes\n")
        return EXIT_OK

    return command


# --- budget -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetRow:
    """One hop of the run's timeout chain: its kind of timer, what it is set to, what the run needs of it."""

    hop: str
    timer: str
    value_set: str
    value_needed: str
    verdict: str  # OK or WARN


def _seconds(value: float | None) -> str:
    return "-" if value is None else format_duration(value)


def budget_rows(run: dict[str, Any]) -> list[BudgetRow]:
    """The run's own budget (status.budget, computed by the operator) and the per-call limits behind it."""
    spec = run.get("spec") or {}
    budget = (run.get("status") or {}).get("budget")
    if not budget:
        raise PluginError(
            f"agentrun {run['metadata']['name']} has no status.budget yet: the operator computes it when it accepts "
            "the run"
        )
    max_execution = budget["maxExecutionSeconds"]
    worst_case = budget["worstCaseSeconds"]
    deadline = budget["activeDeadlineSeconds"]
    model = spec.get("model") or {}
    throttle = spec.get("throttle") or {}
    iterations = spec.get("maxIterations")
    request_timeout = parse_duration(model.get("requestTimeout", "120s"))
    rows = [
        BudgetRow(
            "run (maxExecutionTime)",
            "whole run, soft",
            _seconds(max_execution),
            f"{_seconds(worst_case)} worst case",
            "OK" if budget["fits"] else "WARN",
        ),
        # The hard stop falls at the run's deadline, never after it: a later Job gets only the budget left.
        BudgetRow(
            "Job activeDeadlineSeconds",
            "whole run, hard",
            _seconds(deadline),
            f"<= {_seconds(max_execution)}",
            "OK" if deadline <= max_execution else "WARN",
        ),
        BudgetRow(
            "model call (requestTimeout)",
            "per call",
            _seconds(request_timeout),
            f"x {iterations} iterations" if iterations else "-",
            "OK" if request_timeout < max_execution else "WARN",
        ),
    ]
    if throttle.get("enabled"):
        wait = throttle.get("maxSecondsToWaitInQueue", 60)
        rows.append(
            BudgetRow(
                "throttle queue wait",
                "per call",
                _seconds(wait),
                f"x {iterations} iterations" if iterations else "-",
                "OK" if wait < max_execution else "WARN",
            )
        )
    return rows


def format_table(headers: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A kubectl-style table: upper-case headers, columns padded to their widest cell, three spaces apart."""
    table = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "".join(
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in table
    )


def stream_path(run: dict[str, Any], controller: IngressController | None) -> tuple[IngressController, list[Hop]]:
    """The timers between a reader and the runner for this run's budget, behind the given controller. By
    default, the controller the operator checked the run against (status.budget.streamController); for a run
    admitted before the operator recorded it, the run's own spec.streaming.ingress.controller, else ingress-nginx."""
    try:
        spec = AgentRunSpec.model_validate(run.get("spec") or {})
    except ValidationError as error:
        raise PluginError(
            f"cannot read the spec of agentrun {run['metadata']['name']}: {error.errors()[0]['msg']}"
        ) from None
    recorded = ((run.get("status") or {}).get("budget") or {}).get("streamController")
    if controller is None and recorded is not None and recorded not in get_args(IngressController):
        raise PluginError(
            f"agentrun {run['metadata']['name']} is served behind {recorded!r} (status.budget.streamController), "
            "which this plugin does not know: upgrade the plugin, or name a controller with --controller"
        )
    chosen = (
        controller
        or cast(IngressController | None, recorded)
        or (spec.streaming.ingress.controller if spec.streaming.ingress else "ingress-nginx")
    )
    return chosen, stream_chain(chosen, StreamBudget.from_spec(spec))


def command_budget(target: Target, args: argparse.Namespace, out: TextIO) -> int:
    run = get_run(target, args.run)
    rows = budget_rows(run)
    out.write(
        format_table(
            ("HOP", "TIMER", "SET", "NEEDED", "OK"),
            ((r.hop, r.timer, r.value_set, r.value_needed, r.verdict) for r in rows),
        )
    )
    controller, hops = stream_path(run, args.controller)
    out.write(f"\nstream path, reader to runner, behind {controller} (--controller to choose another):\n")
    out.write(format_chain_table(hops))
    return EXIT_OK


# --- command line -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl agentrun", description="Follow, inspect and steer AgentRuns (agentrun.dev)."
    )
    parser.add_argument("--kubeconfig", help="path of the kubeconfig (default: KUBECONFIG, then ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context to use (default: the current context)")
    parser.add_argument("-n", "--namespace", help="namespace of the AgentRun (default: the context's namespace)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, handler: Callable[[Target, argparse.Namespace, TextIO], int]) -> Any:
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("run", metavar="RUN", help="name of the AgentRun")
        command.set_defaults(handler=handler)
        return command

    add("logs", "print the runner's logs across pod restarts, oldest pod first", command_logs)
    stream = add("stream", "follow the run's event stream, reconnecting with Last-Event-ID", command_stream)
    stream.add_argument("--token", help="stream token (default: read from the Secret <run>-stream-token)")
    stream.add_argument("--url", help="stream URL (default: status.streamURL), e.g. through kubectl port-forward")
    stream.add_argument("--last-event-id", help="resume after this event id instead of from the start")
    stream.add_argument(
        "--max-reconnects", type=int, default=DEFAULT_MAX_RECONNECTS, help="reconnects in a row without a new event"
    )
    result = add("result", "print the run's outcome and its full stored result", command_result)
    result.add_argument("--summary-only", action="store_true", help="print status.result only")
    add(
        "suspend",
        "pause the run: it checkpoints and stops (spec.suspend=true)",
        steering_command({"suspend": True}, "suspend", "suspended"),
    )
    add(
        "resume",
        "resume a suspended run from its checkpoint (spec.suspend=false)",
        steering_command({"suspend": False}, "resume", "resumed"),
    )
    add(
        "cancel",
        "stop the run for good; it ends Cancelled (spec.cancel=true)",
        steering_command({"cancel": True}, "cancel", "cancelled"),
    )
    for verb, decision, done, help_text in (
        ("approve", "Approve", "approved", "approve a tool call the run waits on: it runs once and the run resumes"),
        ("deny", "Deny", "denied", "deny a tool call the run waits on: the model is told, with the reason"),
    ):
        decide = add(verb, help_text, decision_command(decision, done))
        decide.add_argument(
            "call", metavar="CALL", nargs="?", help="the call's key or ITERATION:INDEX (default: the only one waiting)"
        )
        decide.add_argument("--reason", default="", help="why; recorded, and told to the model with a denial")
    budget = add(
        "budget", "print the run's timeout budget: each timer, its value and what the run needs", command_budget
    )
    budget.add_argument(
        "--controller",
        choices=get_args(IngressController),
        help="ingress or gateway controller in front of the stream (default: the one the operator checked the run against)",
    )
    return parser


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = out or sys.stdout
    try:
        code: int = args.handler(Target(args.kubeconfig, args.context, args.namespace), args, output)
        output.flush()  # here, not at exit, so a reader that went away is noticed below
        return code
    except BrokenPipeError:
        # The reader of the output went away (`kubectl agentrun logs X | head`): stop quietly, as Unix tools
        # do. Standard output goes to /dev/null so the interpreter's last flush has nothing to complain about.
        if output is sys.stdout:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except PluginError as error:
        sys.stderr.write(f"error: {error}\n")
        return EXIT_ERROR
    except urllib3.exceptions.HTTPError as error:
        sys.stderr.write(f"error: cannot reach the Kubernetes API server: {error}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
