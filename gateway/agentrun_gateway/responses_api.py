"""An OpenAI Responses-compatible door onto AgentRuns, for the official SDKs pointed at the gateway:

    POST /v1/responses                 background: true required; stream: true streams from sequence 0
    GET  /v1/responses/{id}            the Response; ?stream=true&starting_after=N resumes its stream
    POST /v1/responses/{id}/cancel

``model`` names an AgentRunTemplate of the caller's namespace: an API key's own, or for a Kubernetes token the
``OpenAI-Project`` header (the SDK's ``project=``). A response id is ``resp_`` + the run's name; the namespace
always comes from the caller, so an id never reaches another namespace, and an id the caller may not read
answers 404 as a missing one does. Authentication, templates, Idempotency-Key, the rate limit and the Kubernetes
calls are the runs API's (runs_api.PARTS); the stream is the gateway's relay of the run's event log.
"""

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from aiohttp import web

from agentrun_api import names as run_names
from agentrun_api.constants import API_VERSION, KIND, LABEL_PART_OF, PART_OF
from agentrun_common.kube import ApiError
from agentrun_common.sse import SseEvent, encode_event
from agentrun_gateway import idempotency, metrics, run_templates, runs_api
from agentrun_gateway.callers import Caller, Verb
from agentrun_gateway.kube import KubeApiError
from agentrun_gateway.refusals import RefusalError
from agentrun_gateway.relay import FINISHED, ClientStream, Relay, RunDirectory
from agentrun_gateway.responses_mapping import (
    METADATA_ANNOTATION,
    JsonObject,
    StreamTranslator,
    create_request,
    openai_error,
    response_id,
    run_of,
    run_response,
)

log = logging.getLogger(__name__)

PATH: Final = "/v1/responses"
PROJECT_HEADER: Final = "OpenAI-Project"
# The official SDKs number their attempts of one request; a retry without an Idempotency-Key cannot be told from
# a new request, and its first attempt may have started a run.
RETRY_COUNT_HEADER: Final = "x-stainless-retry-count"
_RETRIEVE_PARAMETERS: Final = frozenset({"stream", "starting_after"})


class StreamParts(Protocol):
    """What this door needs of the started gateway to stream a run."""

    @property
    def runs(self) -> RunDirectory: ...

    @property
    def relay(self) -> Relay: ...


Handler = Callable[[web.Request, Caller, str], Awaitable[web.StreamResponse]]


def register(app: web.Application, stream_parts_of: Callable[[web.Application], StreamParts]) -> None:
    """Serve the Responses door on ``app`` (after runs_api.register, whose parts it uses)."""

    def guarded(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def answer(request: web.Request) -> web.StreamResponse:
            try:
                caller = await _caller(request)
                return await handler(request, caller, _namespace(request, caller))
            except RefusalError as refusal:
                return _refused(refusal)
            except ApiError as error:
                return _refused(runs_api.api_refusal(error))

        return answer

    async def create(request: web.Request, caller: Caller, namespace: str) -> web.StreamResponse:
        parts = request.app[runs_api.PARTS]
        await _allowed(caller, request, Verb.CREATE, namespace)
        key = idempotency.check_key(request.headers.get(idempotency.HEADER))
        if key is None and request.headers.get(RETRY_COUNT_HEADER, "0") not in ("", "0"):
            raise RefusalError(
                400,
                "idempotency_key_required",
                "this is a retry of a create without an Idempotency-Key: its first attempt may have started a run, "
                "and a retry must never start a second one",
                fix="send an Idempotency-Key header with every create (the SDK's extra_headers), the same on retries",
                field=f"header {idempotency.HEADER}",
            )
        body = await runs_api.read_json(request, parts.settings.max_request_bytes)
        checked = create_request(body)
        spec = await run_templates.spec_from_template(
            parts.kube, namespace, checked.template, checked.input, checked.overrides
        )
        if checked.stream and not (spec.get("streaming") or {}).get("enabled", True):
            raise RefusalError(
                400,
                "stream_disabled",
                f"template {checked.template!r} turns the run's stream off (spec.run.streaming.enabled)",
                fix="leave stream out and poll GET /v1/responses/{id}",
                field="stream",
            )
        name = idempotency.run_name(namespace, caller.principal, key)
        metadata: JsonObject = {
            "name": name,
            "labels": {LABEL_PART_OF: PART_OF, run_templates.LABEL_TEMPLATE: checked.template},
        }
        if checked.metadata:
            metadata["annotations"] = {METADATA_ANNOTATION: json.dumps(checked.metadata, sort_keys=True)}
        run = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}
        submission = await runs_api.create_limited(parts, caller, namespace, run, body)
        if checked.stream:
            return await stream(request, namespace, submission.run, -1)
        return web.json_response(run_response(submission.run))

    async def retrieve(request: web.Request, caller: Caller, namespace: str) -> web.StreamResponse:
        name = _run_name(request)
        await _allowed(caller, request, Verb.GET, namespace, name)
        for parameter in request.query:
            if parameter not in _RETRIEVE_PARAMETERS:
                raise RefusalError(
                    400,
                    "unsupported_parameter",
                    f"{parameter} is not supported here",
                    fix="send only stream and starting_after",
                    field=parameter,
                )
        streaming = request.query.get("stream", "false")
        if streaming not in ("true", "false"):
            raise RefusalError(400, "invalid_value", "stream must be true or false", field="stream")
        raw_after = request.query.get("starting_after")
        if raw_after is not None and streaming == "false":
            raise RefusalError(400, "invalid_value", "starting_after goes with stream=true", field="starting_after")
        if raw_after is not None and not (raw_after.isascii() and raw_after.isdigit()):
            raise RefusalError(
                400,
                "invalid_value",
                "starting_after must be a sequence number (a non-negative integer)",
                fix="send the sequence_number of the last event received",
                field="starting_after",
            )
        run = await _existing(request, namespace, name)
        if streaming == "true":
            return await stream(request, namespace, run, -1 if raw_after is None else int(raw_after))
        return web.json_response(run_response(run))

    async def cancel(request: web.Request, caller: Caller, namespace: str) -> web.StreamResponse:
        name = _run_name(request)
        await _allowed(caller, request, Verb.PATCH, namespace, name)
        run = await _existing(request, namespace, name)
        if run_response(run)["status"] in ("queued", "in_progress"):
            run = await request.app[runs_api.PARTS].kube.cancel_run(namespace, name) or run
        return web.json_response(run_response(run))

    async def stream(request: web.Request, namespace: str, run: JsonObject, starting_after: int) -> web.StreamResponse:
        """The run's stream as Responses events: its log replayed from the first event (so every event gets the
        same sequence number on every read), the reader's from ``starting_after`` on."""
        name = str(run["metadata"]["name"])
        gateway = stream_parts_of(request.app)
        info = await gateway.runs.get(namespace, name)
        if info is None:
            raise _not_found(name)
        kube = request.app[runs_api.PARTS].kube

        async def refreshed() -> JsonObject:
            try:
                return await kube.get_run(namespace, name) or run
            except ApiError as error:
                log.info("response %s: final usage not read: %s", name, error)
                return run

        reader = ResponsesStream(request, info.heartbeat_seconds, StreamTranslator(run), starting_after, refreshed)
        metrics.READERS.inc()
        try:
            await reader.begin()
            await gateway.relay.serve(namespace, name, 0, reader, info)
        except KubeApiError as error:
            log.warning("Kubernetes API unavailable during a relay: %s", error)  # the client resumes elsewhere
        finally:
            metrics.READERS.dec()
            await reader.close()
        return reader.response

    app.router.add_routes(
        [
            web.post(PATH, guarded(create)),
            web.get(PATH + "/{id}", guarded(retrieve)),
            web.post(PATH + "/{id}/cancel", guarded(cancel)),
        ]
    )


class ResponsesStream(ClientStream):
    """A reader of the relay that writes each run event as the Responses events it stands for, numbered from
    the log's start; those at or below ``starting_after`` the reader already has."""

    def __init__(
        self,
        request: web.Request,
        heartbeat_seconds: float,
        translator: StreamTranslator,
        starting_after: int,
        refreshed: Callable[[], Awaitable[JsonObject]],
    ) -> None:
        super().__init__(request, heartbeat_seconds)
        self._translator = translator
        self._starting_after = starting_after
        self._refreshed = refreshed

    async def begin(self) -> None:
        await self._write(self._translator.opening())

    async def deliver(self, event: SseEvent) -> None:
        if event.event == FINISHED and not self._translator.ended:
            self._translator.run = await self._refreshed()  # the final snapshot's usage
        await self._write(self._translator.translate(event))

    async def _write(self, events: list[JsonObject]) -> None:
        await self.open()
        for event in events:
            if event["sequence_number"] > self._starting_after:
                await self.send(encode_event(str(event["type"]), json.dumps(event, separators=(",", ":"))))


def _refused(refusal: RefusalError) -> web.Response:
    status, body = openai_error(refusal)
    return web.json_response(body, status=status, headers=refusal.headers or None)


async def _caller(request: web.Request) -> Caller:
    caller = await request.app[runs_api.PARTS].callers.authenticate(request.headers.get("Authorization"))
    if caller is None:
        raise RefusalError(
            401,
            "invalid_api_key",
            "no valid credentials",
            fix="pass an API key of this gateway or a Kubernetes token as the SDK's api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return caller


def _namespace(request: web.Request, caller: Caller) -> str:
    """An API key's namespace, or the OpenAI-Project header's (required with a Kubernetes token)."""
    project = request.headers.get(PROJECT_HEADER, "")
    if caller.uses_api_key and not project:
        return caller.key_namespace
    if not project:
        raise RefusalError(
            400,
            "project_required",
            "with a Kubernetes token the namespace of the response is the OpenAI-Project header, and there is none",
            fix="pass project=<namespace> to the SDK's client (it sends the OpenAI-Project header)",
            field=f"header {PROJECT_HEADER}",
        )
    if not run_names.is_dns_label(project):
        raise _namespace_not_found(project)
    return project


def _namespace_not_found(namespace: str) -> RefusalError:
    return RefusalError(
        404,
        "not_found",
        f"no project {namespace} where this caller may do that",
        fix="check the project (a namespace), and that your token's RBAC (or your API key) covers it",
        field=f"header {PROJECT_HEADER}",
    )


def _not_found(name: str) -> RefusalError:
    """The one answer for a response that does not exist and for one the caller may not see."""
    return RefusalError(404, "not_found", f"no response {response_id(name)} visible to this caller", field="id")


def _run_name(request: web.Request) -> str:
    raw = request.match_info["id"]
    name = run_of(raw)
    if name is None:
        raise RefusalError(404, "not_found", f"no response {raw[:80]!r} visible to this caller", field="id")
    return name


async def _allowed(caller: Caller, request: web.Request, verb: Verb, namespace: str, name: str = "") -> None:
    if not await request.app[runs_api.PARTS].callers.may(caller, verb, namespace, name):
        raise _not_found(name) if name else _namespace_not_found(namespace)


async def _existing(request: web.Request, namespace: str, name: str) -> JsonObject:
    run = await request.app[runs_api.PARTS].kube.get_run(namespace, name)
    if run is None:
        raise _not_found(name)
    return run
