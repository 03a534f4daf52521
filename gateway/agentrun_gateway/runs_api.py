"""The HTTP runs API: submit an AgentRun and get a handle at once, poll it, follow its events, cancel it, list.

    POST /v1/namespaces/{namespace}/runs               202 + Location + Retry-After (Idempotency-Key honoured)
    GET  /v1/namespaces/{namespace}/runs               paginated with the API server's continue tokens
    GET  /v1/namespaces/{namespace}/runs/{id}          phase, progress, usage, result
    POST /v1/namespaces/{namespace}/runs/{id}/cancel
    POST /v1/namespaces/{namespace}/runs/{id}/approvals/{call}/approve|deny   decide a waiting tool call
    GET  /v1/namespaces/{namespace}/runs/{id}/events   the gateway's SSE stream, resumable with Last-Event-ID
    GET  /v1/openapi.json                              this API's OpenAPI document

Served by the stream gateway: it already ends clients' HTTP connections behind the one stable route, holds the
TokenReview and SubjectAccessReview machinery, and its stream is what ``.../events`` is. Every state lives in
the API server (the run, the idempotency mapping), so any replica answers any request.
"""

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agentrun_api import names as run_names
from agentrun_api.constants import API_VERSION, KIND, LABEL_PART_OF, PART_OF
from agentrun_api.status import TERMINAL_PHASES
from agentrun_common.kube import ApiError, Credentials, KubeClient
from agentrun_gateway import idempotency, run_templates, runs_approvals
from agentrun_gateway.callers import Caller, Callers, Verb
from agentrun_gateway.kube import READER_RETRY, KubeApi
from agentrun_gateway.rate_limit import CallerRateLimit
from agentrun_gateway.refusals import RefusalError
from agentrun_gateway.run_templates import LABEL_TEMPLATE
from agentrun_gateway.runs_kube import JsonObject, RunsKube
from agentrun_gateway.runs_openapi import OPENAPI_PATH, openapi_document
from agentrun_gateway.runs_settings import RunsApiSettings
from agentrun_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

PREFIX = "/v1/namespaces/{namespace}/runs"
DEFAULT_PAGE = 50
MAX_PAGE = 500
_REQUEST_FIELDS = ("spec", "template", "input", "overrides")

RelayEvents = Callable[[web.Request, str, str], Awaitable[web.StreamResponse]]


@dataclass
class _Parts:
    settings: RunsApiSettings
    client: KubeClient
    kube: RunsKube
    callers: Callers
    limit: CallerRateLimit
    relay_events: RelayEvents
    approvals: runs_approvals.Approvals


PARTS = web.AppKey("runs_api", _Parts)


def register(
    app: web.Application,
    settings: GatewaySettings,
    credentials: Callable[[], Credentials],
    relay_events: RelayEvents,
) -> None:
    """Add the runs API's routes to the gateway's app; ``relay_events`` serves a run's SSE stream."""
    routes = [
        web.get(OPENAPI_PATH, _openapi),
        web.post(PREFIX, _guarded(_submit)),
        web.get(PREFIX, _guarded(_list)),
        web.get(PREFIX + "/{id}", _guarded(_get)),
        web.post(PREFIX + "/{id}/cancel", _guarded(_cancel)),
        web.get(PREFIX + "/{id}/events", _guarded(_events)),
        *(
            web.post(PREFIX + "/{id}/approvals/{call}/" + action, _guarded(_deciding(decision)))
            for action, decision in runs_approvals.DECISIONS.items()
        ),
    ]
    app.router.add_routes(routes)

    async def start(app: web.Application) -> None:
        client = KubeClient(credentials(), timeout_seconds=10, retry=READER_RETRY)
        kube = RunsKube(client)
        own = settings.runs_api
        callers = Callers(
            KubeApi(client, settings.default_heartbeat_seconds), kube, own.api_keys_namespace, own.api_key_cache_seconds
        )
        limit = CallerRateLimit(own.runs_per_minute_per_caller, own.burst_runs_per_caller)
        app[PARTS] = _Parts(own, client, kube, callers, limit, relay_events, runs_approvals.Approvals(kube))

    async def stop(app: web.Application) -> None:
        await app[PARTS].client.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


def _refused(refusal: RefusalError) -> web.Response:
    return web.json_response(refusal.body(), status=refusal.status, headers=refusal.headers or None)


def api_refusal(error: ApiError) -> RefusalError:
    """An API server error as this API's answer: the caller's fault (422), a namespace not served (404), or
    ours to retry (503)."""
    if error.status in (400, 422):
        return RefusalError(422, "RejectedByKubernetes", error.message, fix="correct the field the message names")
    if error.status == 404:  # the namespace itself is gone (the caller may act in it, so nothing leaks)
        return RefusalError(404, "NotFound", error.message, fix="check the namespace", field="namespace")
    if error.status == 403:
        # The chart grants the gateway only the namespaces the operator watches (watchNamespace): elsewhere no
        # run could be served, so the namespace is not found here.
        log.warning("the gateway's ServiceAccount may not act there: %s", error)
        return RefusalError(
            404,
            "NotFound",
            "this gateway does not serve that namespace",
            fix="use a namespace the operator watches (the chart's watchNamespace)",
            field="namespace",
        )
    log.warning("Kubernetes API unavailable: %s", error)
    return RefusalError(
        503,
        "KubernetesUnavailable",
        "the Kubernetes API is unavailable",
        fix="retry shortly",
        headers={"Retry-After": "2"},
    )


Handler = Callable[[web.Request, _Parts, Caller, str], Awaitable[web.StreamResponse]]


def _guarded(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Authenticate, check the path's namespace, and turn refusals into JSON answers."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        parts = request.app[PARTS]
        namespace = request.match_info["namespace"]
        try:
            caller = await parts.callers.authenticate(request.headers.get("Authorization"))
            if caller is None:
                raise RefusalError(
                    401,
                    "Unauthenticated",
                    "no valid credentials",
                    fix="send a Kubernetes token or an API key as 'Authorization: Bearer <token>'",
                    field="header Authorization",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if not run_names.is_dns_label(namespace):
                raise _not_found(namespace, request.match_info.get("id"))
            return await handler(request, parts, caller, namespace)
        except RefusalError as refusal:
            return _refused(refusal)
        except ApiError as error:
            return _refused(api_refusal(error))

    return guarded


def _not_found(namespace: str, run: str | None) -> RefusalError:
    """The one answer for a run that does not exist and for a namespace or run the caller may not see."""
    if run is None:
        return RefusalError(
            404,
            "NotFound",
            f"no namespace {namespace} where this caller may do that",
            fix="check the namespace, and that your token's RBAC (or your API key) covers it",
            field="namespace",
        )
    return RefusalError(
        404,
        "NotFound",
        f"no run {run} in namespace {namespace} visible to this caller",
        fix="check the run's id and namespace",
        field="id",
    )


async def _allowed(parts: _Parts, caller: Caller, verb: Verb, namespace: str, run: str | None = None) -> None:
    if not await parts.callers.may(caller, verb, namespace, run or ""):
        raise _not_found(namespace, run)


def _run_id(request: web.Request) -> str:
    run = request.match_info["id"]
    if run_names.run_name_problem(run) is not None:
        raise _not_found(request.match_info["namespace"], run)
    return run


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


# --- submit ---------------------------------------------------------------------------------------------------


async def read_json(request: web.Request, max_bytes: int, *, optional: bool = False) -> Any:
    """The request's JSON body; with ``optional``, None for an empty body."""
    too_large = RefusalError(
        413,
        "RequestTooLarge",
        f"the request body is larger than {max_bytes} bytes",
        fix="send a shorter input; put large material where the run's tools can fetch it",
        field="body",
    )
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_any():
        body.extend(chunk)
        if len(body) > max_bytes:
            raise too_large
    if optional and not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError as error:
        raise RefusalError(
            400, "InvalidJson", f"the request body is not JSON: {error}", fix="send a JSON object", field="body"
        ) from None


def _checked_request(body: Any, caller: Caller) -> JsonObject:
    if not isinstance(body, dict):
        raise RefusalError(
            422, "InvalidField", "the request body must be a JSON object", fix="send a JSON object", field="body"
        )
    for key in body:
        if key not in _REQUEST_FIELDS:
            raise RefusalError(
                422,
                "UnknownField",
                f"unknown field {key!r}",
                fix="send either {spec} or {template, input, overrides}; nothing else",
                field=str(key),
            )
    if ("spec" in body) == ("template" in body):
        raise RefusalError(
            422,
            "InvalidField",
            "give exactly one of spec (a whole AgentRun spec) and template (an AgentRunTemplate's name)",
            fix="send {spec: {...}} or {template: name, input: text, overrides: {...}}",
            field="template" if "template" in body else "spec",
        )
    if "spec" in body:
        if caller.uses_api_key:
            raise RefusalError(
                403,
                "TemplateRequired",
                "an API key submits runs from templates only: a whole spec could point a Secret of the namespace "
                "at any endpoint",
                fix="send {template, input, overrides}, or use a Kubernetes token allowed to create agentruns",
                field="spec",
            )
        for key in ("input", "overrides"):
            if key in body:
                raise RefusalError(
                    422,
                    "InvalidField",
                    f"{key} goes inside spec, or with a template",
                    fix=f"move {key} into spec",
                    field=key,
                )
        if not isinstance(body["spec"], dict):
            raise RefusalError(
                422,
                "InvalidField",
                "spec must be a JSON object (an AgentRun spec)",
                fix="send the spec as an object",
                field="spec",
            )
        return body
    name, run_input, overrides = body["template"], body.get("input"), body.get("overrides", {})
    if not isinstance(name, str) or not run_names.is_dns_subdomain(name):
        raise RefusalError(
            422,
            "InvalidField",
            "template must be the name of an AgentRunTemplate",
            fix="send the template's metadata.name",
            field="template",
        )
    if not isinstance(run_input, str) or not run_input:
        raise RefusalError(
            422,
            "InvalidField",
            "input must be a non-empty string: the task the agent is given",
            fix="send the task as input",
            field="input",
        )
    if not isinstance(overrides, dict):
        raise RefusalError(
            422,
            "InvalidField",
            "overrides must be a JSON object of the fields the template allows",
            fix='send for example {"maxIterations": 10}',
            field="overrides",
        )
    return body


async def _submit(request: web.Request, parts: _Parts, caller: Caller, namespace: str) -> web.StreamResponse:
    await _allowed(parts, caller, Verb.CREATE, namespace)
    settings = parts.settings
    key = idempotency.check_key(request.headers.get(idempotency.HEADER))
    body = _checked_request(await read_json(request, settings.max_request_bytes), caller)
    labels = {LABEL_PART_OF: PART_OF}
    if "spec" in body:
        spec = run_templates.validated_spec(body["spec"], lambda path: f"spec.{path}")
    else:
        spec = await run_templates.spec_from_template(
            parts.kube, namespace, body["template"], body["input"], body.get("overrides", {})
        )
        labels[LABEL_TEMPLATE] = body["template"]
    name = idempotency.run_name(namespace, caller.principal, key)
    run = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "labels": labels}, "spec": spec}
    submission = await create_limited(parts, caller, namespace, run, body)
    location = f"/v1/namespaces/{namespace}/runs/{name}"
    headers = {"Location": location, "Retry-After": _seconds(settings.poll_after_seconds)}
    if not submission.created:
        headers["Idempotent-Replayed"] = "true"
    return web.json_response(run_view(submission.run), status=202, headers=headers)


async def create_limited(
    parts: _Parts, caller: Caller, namespace: str, run: JsonObject, request: JsonObject
) -> idempotency.Submission:
    """Create ``run`` (named by ``idempotency.run_name``) once per ``request`` within the caller's rate limit;
    a replay is not counted."""
    settings = parts.settings
    wait = parts.limit.reserve(caller.principal)
    if wait is not None:
        raise RefusalError(
            429,
            "TooManyRuns",
            f"this caller submitted more than {settings.runs_per_minute_per_caller} runs a minute",
            fix=f"retry after {wait:.0f} s (the Retry-After header), with the same Idempotency-Key",
            headers={"Retry-After": str(max(1, round(wait + 0.5)))},
        )
    try:
        submission = await idempotency.create_once(
            parts.kube, namespace, run, caller.principal, idempotency.request_digest(request)
        )
    except BaseException:
        parts.limit.refund(caller.principal)
        raise
    if not submission.created:
        parts.limit.refund(caller.principal)
    return submission


def _seconds(value: float) -> str:
    return str(max(1, round(value)))


# --- read, list, cancel, events -------------------------------------------------------------------------------


def run_view(run: JsonObject) -> JsonObject:
    """What a caller sees of an AgentRun: its id, phase, progress, usage, result and links."""
    metadata, spec, status = run.get("metadata", {}), run.get("spec", {}), run.get("status") or {}
    namespace, name = metadata.get("namespace", ""), metadata.get("name", "")
    usage = status.get("usage") or {}
    result = status.get("result")
    base = f"/v1/namespaces/{namespace}/runs/{name}"
    return {
        "id": name,
        "namespace": namespace,
        "phase": status.get("phase") or "Pending",
        "reason": status.get("reason", ""),
        "message": status.get("message", ""),
        "progress": {"iteration": int(status.get("iteration", 0)), "maxIterations": int(spec.get("maxIterations", 0))},
        "usage": {
            "promptTokens": int(usage.get("promptTokens", 0)),
            "completionTokens": int(usage.get("completionTokens", 0)),
            "totalTokens": int(usage.get("totalTokens", 0)),
        },
        "result": {
            "summary": str(result.get("summary", "")),
            "ref": str(result.get("ref", "")),
            "bytes": int(result.get("bytes", 0)),
        }
        if result
        else None,
        "template": (metadata.get("labels") or {}).get(LABEL_TEMPLATE, ""),
        "cancelRequested": bool(spec.get("cancel", False)),
        "createdAt": metadata.get("creationTimestamp", ""),
        "completedAt": status.get("completionTime") or "",
        "approvals": runs_approvals.approvals_view(run, base),
        "links": {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"},
    }


def _ended(run: JsonObject) -> bool:
    return (run.get("status") or {}).get("phase") in TERMINAL_PHASES


async def _get(request: web.Request, parts: _Parts, caller: Caller, namespace: str) -> web.StreamResponse:
    name = _run_id(request)
    await _allowed(parts, caller, Verb.GET, namespace, name)
    run = await parts.kube.get_run(namespace, name)
    if run is None:
        raise _not_found(namespace, name)
    headers = {} if _ended(run) else {"Retry-After": _seconds(parts.settings.poll_after_seconds)}
    return web.json_response(run_view(run), headers=headers or None)


async def _list(request: web.Request, parts: _Parts, caller: Caller, namespace: str) -> web.StreamResponse:
    await _allowed(parts, caller, Verb.LIST, namespace)
    raw_limit = request.query.get("limit", str(DEFAULT_PAGE))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise RefusalError(
            400,
            "InvalidField",
            f"limit must be a whole number from 1 to {MAX_PAGE}",
            fix=f"send for example limit={DEFAULT_PAGE}",
            field="limit",
        )
    token = request.query.get("continue", "")
    try:
        page = await parts.kube.list_runs(namespace, int(raw_limit), token)
    except ApiError as error:
        if error.status == 410:
            raise RefusalError(
                410,
                "ContinueExpired",
                "the continue token has expired",
                fix="list again from the start, without continue",
                field="continue",
            ) from None
        if error.status in (400, 422) and token:
            raise RefusalError(
                400,
                "InvalidField",
                "continue is not a token this API gave",
                fix="send the continue value of the previous page, unchanged",
                field="continue",
            ) from None
        raise
    return web.json_response(
        {
            "items": [run_view(run) for run in page.get("items") or []],
            "continue": str((page.get("metadata") or {}).get("continue") or ""),
        }
    )


async def _cancel(request: web.Request, parts: _Parts, caller: Caller, namespace: str) -> web.StreamResponse:
    name = _run_id(request)
    await _allowed(parts, caller, Verb.PATCH, namespace, name)
    run = await parts.kube.get_run(namespace, name)
    if run is None:
        raise _not_found(namespace, name)
    if not _ended(run):
        run = await parts.kube.cancel_run(namespace, name) or run
    return web.json_response(run_view(run), status=202 if not _ended(run) else 200)


async def _events(request: web.Request, parts: _Parts, caller: Caller, namespace: str) -> web.StreamResponse:
    name = _run_id(request)
    await _allowed(parts, caller, Verb.GET, namespace, name)
    last_event_id = request.headers.get("Last-Event-ID")
    if last_event_id is not None and not last_event_id.isdigit():
        raise RefusalError(
            400,
            "InvalidField",
            "Last-Event-ID must be an event id (a non-negative integer)",
            fix="send the id of the last event received, or no header to start from the beginning",
            field="header Last-Event-ID",
        )
    if await parts.kube.get_run(namespace, name) is None:
        raise _not_found(namespace, name)
    return await parts.relay_events(request, namespace, name)


# --- approve, deny --------------------------------------------------------------------------------------------


def _deciding(decision: str) -> Handler:
    """The handler recording ``decision`` (Approve or Deny) on the call the path names."""

    async def decide(request: web.Request, parts: _Parts, caller: Caller, namespace: str) -> web.StreamResponse:
        name = _run_id(request)
        await _allowed(parts, caller, Verb.GET, namespace, name)  # who may not see the run never learns of it
        if caller.identity is None:
            raise runs_approvals.api_key_refused()
        if not await parts.callers.may_decide(caller, namespace):
            raise runs_approvals.not_an_approver(caller.identity.username, namespace)
        reason = runs_approvals.checked_reason(
            await read_json(request, parts.settings.max_request_bytes, optional=True)
        )
        run = await parts.kube.get_run(namespace, name)
        if run is None:
            raise _not_found(namespace, name)
        decided = await parts.approvals.decide(
            run, request.match_info["call"], decision, reason, caller.identity.username
        )
        headers = {"Idempotent-Replayed": "true"} if decided.replayed else None
        return web.json_response(decided.record, headers=headers)

    return decide
