"""The HTTP face of the emulated apiserver: a kmock `KubernetesScaffold` whose requests are routed to the store."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import attrs
import kmock

from tests.harness.apiserver import discovery, errors, openapi, protobuf
from tests.harness.apiserver.accounting import RequestLog, RequestRecord
from tests.harness.apiserver.faults import Faults
from tests.harness.apiserver.resources import Registry, ResourceType
from tests.harness.apiserver.selectors import parse_field_selector, parse_label_selector
from tests.harness.apiserver.store import Store, Watcher
from tests.harness.apiserver.tables import render_table, wants_table

# Answers a SubjectAccessReview spec: (allowed, reason).
AuthorizationPolicy = Callable[[Mapping[str, Any]], tuple[bool, str]]
# Answers a TokenReview: the user info ({"username", "uid", "groups"}) a bearer token belongs to, or None.
AuthenticationPolicy = Callable[[str], Mapping[str, Any] | None]
TABLE_CONTENT_TYPE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def allow_all(spec: Mapping[str, Any]) -> tuple[bool, str]:
    """The default authorization policy: everything is allowed (as for a cluster-admin)."""
    return True, "allowed by the emulated apiserver's default policy"


def no_tokens(token: str) -> Mapping[str, Any] | None:
    """The default authentication policy for TokenReviews: no token is known."""
    return None


@dataclass(frozen=True)
class Route:
    """A request URL split into the parts of a Kubernetes resource path."""

    group: str
    version: str
    plural: str = ""
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def parse_route(path: str) -> Route | None:
    """Split `/api/v1/namespaces/ns/pods/x/log` or `/apis/g/v/plural/x/status`; None for non-resource URLs."""
    parts = [part for part in path.split("/") if part]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace: str | None = None
    if len(rest) >= 2 and rest[0] == "namespaces" and (len(rest) >= 3 and rest[2] not in ("status", "finalize")):
        namespace, rest = rest[1], rest[2:]
    plural = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return Route(group, version, plural, namespace, name, subresource)


def verb_of(method: str, route: Route, query: Mapping[str, str]) -> str:
    """The Kubernetes verb of a request, as the apiserver's RequestInfo resolves it."""
    if method in ("GET", "HEAD"):
        if query.get("watch") in ("true", "1"):
            return "watch"
        return "get" if route.name else "list"
    return {
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if route.name else "deletecollection",
    }.get(method, method.lower())


@dataclass
class HandlerSettings:
    """Behaviour knobs of the HTTP layer."""

    # Seconds between BOOKMARK events on watches that allow them (the apiserver sends one about every minute;
    # shorter here so tests see them).
    bookmark_interval_seconds: float = 1.0
    # Upper bound of a watch without timeoutSeconds, in seconds (the apiserver's --min-request-timeout is 1800).
    max_watch_seconds: float = 1800.0
    # How often a followed pod log (`kubectl logs -f`) looks for new text, in seconds.
    log_poll_seconds: float = 0.1


def paginate(
    items: list[dict[str, Any]], version: str, limit: str | None, token: str | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`limit` and `continue`: a page of a list sorted by namespace/name, with a token naming where the next page
    starts. Unlike the apiserver, later pages show the current state, not the first page's snapshot."""
    metadata: dict[str, Any] = {"resourceVersion": version}
    if token:
        try:
            start = json.loads(base64.urlsafe_b64decode(token.encode()))["start"]
        except (ValueError, KeyError, TypeError):
            raise errors.bad_request("continue key is not valid") from None
        items = [item for item in items if _position(item) > start]
    count = int(limit) if limit and limit.isdigit() else 0
    if count and len(items) > count:
        remaining = len(items) - count
        items = items[:count]
        next_token = {"start": _position(items[-1])}
        metadata["continue"] = base64.urlsafe_b64encode(json.dumps(next_token).encode()).decode()
        metadata["remainingItemCount"] = remaining
    return items, metadata


def _position(item: Mapping[str, Any]) -> str:
    return f"{item['metadata'].get('namespace', '')}/{item['metadata']['name']}"


def _json(body: Any, status: int = 200, content_type: str = "application/json") -> aiohttp.web.Response:
    return aiohttp.web.Response(body=json.dumps(body).encode(), status=status, headers={"Content-Type": content_type})


@attrs.define(kw_only=True)
class ApiServerHandler(kmock.KubernetesScaffold):
    """kube-apiserver over HTTP: discovery from the scaffold's routes (fed by the registry), everything else from the
    store; every request recorded and first offered to the fault hook."""

    registry: Registry
    store: Store
    faults: Faults = attrs.field(factory=Faults)
    log: RequestLog = attrs.field(factory=RequestLog)
    settings: HandlerSettings = attrs.field(factory=HandlerSettings)
    authorization_policy: AuthorizationPolicy = allow_all
    authentication_policy: AuthenticationPolicy = no_tokens
    # Pod logs served at pods/<name>/log, keyed by (namespace, pod name); the e2e Job executor writes them.
    pod_logs: dict[tuple[str, str], str] = attrs.field(factory=dict)
    # Unexpected exceptions while serving (bugs of the emulator, not API errors); tests assert it stays empty.
    internal_errors: list[BaseException] = attrs.field(factory=list, init=False)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Serve one HTTP request. Replaces kmock's request parsing, which cannot parse every apiserver URL
        (`/api/v1/namespaces`), with the apiserver's own path rules."""
        body = await raw_request.read()
        route = parse_route(raw_request.path)
        resource = (
            kmock.resource(group=route.group, version=route.version, plural=route.plural or None) if route else None
        )
        request = kmock.Request(
            id=len(self._requests),
            raw_request=raw_request,
            url=raw_request.url,
            method=raw_request.method,
            params=dict(raw_request.query),
            headers=dict(raw_request.headers),
            body=body,
            text=body.decode(errors="replace"),
            resource=resource,
            namespace=route.namespace if route else None,
            name=route.name if route else None,
            subresource=route.subresource if route else None,
        )
        self._requests.append(request)
        try:
            return await self._handle(request)
        except Exception as exc:
            self.internal_errors.append(exc)
            return _json(errors.ApiError(500, "InternalError", f"the emulated apiserver failed: {exc!r}").status(), 500)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        raw = request._raw_request
        assert raw is not None
        route = parse_route(raw.path)
        query = dict(raw.query)
        record = self._record(raw, route, query)
        self.log.add(record)
        try:
            await self.faults.apply(record)
            if route is None or (not route.plural):
                response = await self._serve_non_resource(request, raw.path, route)
            else:
                response = await self._serve_resource(raw, route, query, record)
        except errors.ApiError as exc:
            response = _json(exc.status(), exc.code)
            for header, value in exc.headers.items():
                response.headers[header] = value
        record.code = response.status
        return response

    def _record(self, raw: aiohttp.web.BaseRequest, route: Route | None, query: Mapping[str, str]) -> RequestRecord:
        record = RequestRecord(
            method=raw.method, path=raw.path_qs, verb="", user_agent=raw.headers.get("User-Agent", "")
        )
        if route is not None and route.plural:
            rt = self.registry.lookup(route.group, route.version, route.plural)
            record.verb = verb_of(raw.method, route, query)
            record.group, record.version, record.resource = route.group, route.version, route.plural
            record.kind = rt.kind if rt else ""
            record.subresource = route.subresource or ""
            record.namespace, record.name = route.namespace or "", route.name or ""
        return record

    # ----- discovery and other non-resource URLs -----

    async def _serve_non_resource(
        self, request: kmock.Request, path: str, route: Route | None
    ) -> aiohttp.web.StreamResponse:
        if path in ("/healthz", "/livez", "/readyz"):
            return aiohttp.web.Response(text="ok")
        if path.startswith("/openapi/"):
            document = openapi.serve(self.registry, path)
            if document is None:
                raise errors.resource_not_found(path)
            return _json(document)
        try:
            response: aiohttp.web.StreamResponse = await super()._handle(request)
        except kmock.KubernetesError as exc:
            raise errors.resource_not_found(path) from exc
        return response

    async def _serve_root(self, request: kmock.Request) -> dict[str, Any]:
        paths = {"/api", "/api/v1", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi/v2", "/openapi/v3"}
        for rt in self.registry:
            if rt.group:
                paths |= {f"/apis/{rt.group}", f"/apis/{rt.group}/{rt.version}"}
        return {"paths": sorted(paths)}

    async def _serve_server_version(self, request: kmock.Request) -> dict[str, Any]:
        return dict(discovery.SERVER_VERSION)

    async def _serve_api(self, request: kmock.Request) -> dict[str, Any]:
        return discovery.api_versions()

    async def _serve_apis(self, request: kmock.Request) -> dict[str, Any]:
        return discovery.api_group_list(self.registry)

    async def _serve_group(self, request: kmock.Request) -> dict[str, Any]:
        group = request.url.path.strip("/").split("/")[1]
        document = discovery.api_group(self.registry, group)
        if document is None:
            raise errors.resource_not_found(f"/apis/{group}")
        return document

    async def _serve_version(self, request: kmock.Request) -> dict[str, Any]:
        group = (request.resource.group if request.resource else None) or ""
        version = (request.resource.version if request.resource else None) or ""
        document = discovery.api_resource_list(self.registry, group, version)
        if document is None:
            raise errors.resource_not_found(f"/apis/{group}/{version}")
        return document

    # ----- resources -----

    def _resource_type(self, route: Route, verb: str) -> ResourceType:
        rt = self.registry.lookup(route.group, route.version, route.plural)
        if rt is None or (route.namespace is not None and not rt.namespaced):
            raise errors.resource_not_found(f"{route.plural}.{route.group}" if route.group else route.plural)
        if verb not in rt.verbs:
            raise errors.method_not_allowed(
                f"the server does not allow this method on the requested resource ({verb} {rt.plural})"
            )
        if route.subresource and route.subresource not in rt.subresources:
            raise errors.resource_not_found(f"{rt.plural}/{route.subresource}")
        return rt

    async def _serve_resource(
        self, raw: aiohttp.web.BaseRequest, route: Route, query: Mapping[str, str], record: RequestRecord
    ) -> aiohttp.web.StreamResponse:
        verb = record.verb
        rt = self._resource_type(route, verb)
        dry_run = query.get("dryRun") == "All"
        if query.get("dryRun") not in (None, "All"):
            raise errors.bad_request(f'Invalid value: "{query["dryRun"]}": supported values: "All"')
        strict = query.get("fieldValidation", "").lower() == "strict"
        accept = raw.headers.get("Accept", "")
        if rt.virtual:
            return self._serve_review(rt, await _body(raw))
        if route.subresource == "log":
            if query.get("follow") in ("true", "1"):
                return await self._follow_log(raw, rt, route)
            return self._serve_log(rt, route, query)
        if verb == "watch":
            return await self._serve_watch(raw, rt, route, query, record)
        if verb == "list":
            items, version = self.store.list_objects(
                rt,
                route.namespace,
                parse_label_selector(query.get("labelSelector")),
                parse_field_selector(query.get("fieldSelector")),
            )
            items, list_metadata = paginate(items, version, query.get("limit"), query.get("continue"))
            if wants_table(accept):
                table = render_table(rt, items, list_metadata["resourceVersion"])
                table["metadata"] = list_metadata
                return _json(table, content_type=TABLE_CONTENT_TYPE)
            return _json(
                {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": list_metadata, "items": items}
            )
        if verb == "get":
            assert route.name is not None
            obj = self.store.get(rt, route.namespace, route.name)
            if wants_table(accept) and not route.subresource:
                return _json(
                    render_table(rt, [obj], obj["metadata"]["resourceVersion"]), content_type=TABLE_CONTENT_TYPE
                )
            return _json(obj)
        if verb == "create":
            if route.name:
                raise errors.method_not_allowed(
                    f"the server does not allow this method on the requested resource ({route.subresource})"
                )
            created = self.store.create(rt, route.namespace, await _body(raw), strict=strict, dry_run=dry_run)
            return _json(created, 201)
        if verb == "update":
            assert route.name is not None
            return _json(
                self.store.update(
                    rt,
                    route.namespace,
                    route.name,
                    await _body(raw),
                    subresource=route.subresource,
                    strict=strict,
                    dry_run=dry_run,
                )
            )
        if verb == "patch":
            assert route.name is not None
            content_type = raw.headers.get("Content-Type", "")
            obj = self.store.patch(
                rt,
                route.namespace,
                route.name,
                content_type,
                await _body(raw),
                subresource=route.subresource,
                strict=strict,
                dry_run=dry_run,
            )
            return _json(obj)
        if verb in ("delete", "deletecollection"):
            options = dict(await _body(raw, default={}) or {})
            for option in ("propagationPolicy", "gracePeriodSeconds"):
                if option in query:
                    options[option] = query[option]
            if verb == "deletecollection":
                if dry_run:
                    raise errors.bad_request("dryRun of deletecollection is not emulated")
                deleted = self.store.delete_collection(
                    rt,
                    route.namespace,
                    parse_label_selector(query.get("labelSelector")),
                    parse_field_selector(query.get("fieldSelector")),
                    options,
                )
                return _json(
                    {
                        "kind": rt.list_kind,
                        "apiVersion": rt.api_version,
                        "metadata": {"resourceVersion": str(self.store.revision)},
                        "items": deleted,
                    }
                )
            assert route.name is not None
            obj, gone = self.store.delete(rt, route.namespace, route.name, options, dry_run=dry_run)
            return _json(obj, 200 if gone else 202)
        raise errors.method_not_allowed(
            f"the server does not allow this method on the requested resource ({raw.method})"
        )

    def _serve_review(self, rt: ResourceType, body: Any) -> aiohttp.web.StreamResponse:
        """SubjectAccessReview / SelfSubjectAccessReview / TokenReview: answered by the configurable policies,
        never stored (the apiserver's authorizer and authenticator answer them)."""
        if not isinstance(body, Mapping) or not isinstance(body.get("spec"), Mapping):
            raise errors.bad_request(f"a {rt.kind} needs a spec")
        spec = dict(body["spec"])
        if rt.kind == "TokenReview":
            user = self.authentication_policy(str(spec.get("token", "")))
            status: dict[str, Any] = {"authenticated": user is not None}
            if user is not None:
                status["user"] = dict(user)
            # The apiserver does not echo the token back.
            return _json(
                {"apiVersion": rt.api_version, "kind": rt.kind, "metadata": {}, "spec": {}, "status": status}, 201
            )
        if rt.kind == "SelfSubjectAccessReview":
            spec.setdefault("user", "emulated-user")
        allowed, reason = self.authorization_policy(spec)
        review = {
            "apiVersion": rt.api_version,
            "kind": rt.kind,
            "metadata": {"creationTimestamp": None},
            "spec": body["spec"],
        }
        review["status"] = (
            {"allowed": allowed, "reason": reason} if allowed else {"allowed": False, "denied": True, "reason": reason}
        )
        return _json(review, 201)

    def _serve_log(self, rt: ResourceType, route: Route, query: Mapping[str, str]) -> aiohttp.web.StreamResponse:
        """pods/log: the text a kubelet would return (from `pod_logs`), `tailLines` honoured."""
        assert route.name is not None
        self.store.get(rt, route.namespace, route.name)
        text = self.pod_logs.get((route.namespace or "", route.name), "")
        tail = query.get("tailLines", "")
        if tail.isdigit():
            text = "".join(text.splitlines(keepends=True)[-int(tail) :]) if int(tail) > 0 else ""
        return aiohttp.web.Response(text=text, content_type="text/plain")

    async def _follow_log(
        self, raw: aiohttp.web.BaseRequest, rt: ResourceType, route: Route
    ) -> aiohttp.web.StreamResponse:
        """pods/log?follow=true (`kubectl logs -f`): the text so far, then what is appended, until the pod has
        finished (phase Succeeded or Failed) or is gone."""
        assert route.name is not None
        self.store.get(rt, route.namespace, route.name)
        key = (route.namespace or "", route.name)
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        await response.prepare(raw)
        sent = 0
        while raw.transport is not None and not raw.transport.is_closing():
            text = self.pod_logs.get(key, "")
            if len(text) > sent:
                await response.write(text[sent:].encode())
                sent = len(text)
            pod = self.store.try_get("pods", route.namespace, route.name)
            if pod is None or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                break
            await asyncio.sleep(self.settings.log_poll_seconds)
        await response.write_eof()
        return response

    async def _serve_watch(
        self,
        raw: aiohttp.web.BaseRequest,
        rt: ResourceType,
        route: Route,
        query: Mapping[str, str],
        record: RequestRecord,
    ) -> aiohttp.web.StreamResponse:
        """A watch stream: JSON lines of {type, object}, BOOKMARKs when allowed, ended by timeoutSeconds; a too-old
        resourceVersion gets one ERROR event carrying a 410 Expired Status, as the apiserver sends it."""
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"))
        content_type = TABLE_CONTENT_TYPE if wants_table(raw.headers.get("Accept", "")) else "application/json"
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": content_type})
        try:
            watcher = self.store.open_watch(
                rt, route.namespace, labels, fields, query.get("resourceVersion"), name=route.name
            )
        except errors.ApiError as exc:
            if exc.code != 410:
                raise
            await response.prepare(raw)
            await response.write(json.dumps({"type": "ERROR", "object": exc.status()}).encode() + b"\n")
            await response.write_eof()
            return response
        dropped = self.faults.watch_opened(record)
        loop = asyncio.get_running_loop()
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else self.settings.max_watch_seconds
        deadline = loop.time() + timeout
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        as_table = wants_table(raw.headers.get("Accept", ""))
        next_bookmark = loop.time() + self.settings.bookmark_interval_seconds
        await response.prepare(raw)
        try:
            while True:
                wake_at = min(deadline, next_bookmark) if bookmarks else deadline
                # Wake at least every second to notice a client that went away (aiohttp does not cancel handlers).
                event = await self._next_event(watcher, dropped, min(wake_at - loop.time(), 1.0))
                if raw.transport is None or raw.transport.is_closing():
                    return response
                if dropped.is_set():
                    # A dropped connection, as when an apiserver or load balancer dies: no clean end of stream.
                    if raw.transport is not None:
                        raw.transport.close()
                    return response
                if event is not None:
                    obj = event.object
                    if as_table:
                        # `kubectl get -w`: each event carries a one-row Table of the object.
                        obj = render_table(rt, [obj], obj["metadata"]["resourceVersion"])
                    await response.write(json.dumps({"type": event.type, "object": obj}).encode() + b"\n")
                    continue
                now = loop.time()
                if bookmarks and now >= next_bookmark:
                    bookmark = {
                        "kind": rt.kind,
                        "apiVersion": rt.api_version,
                        "metadata": {"resourceVersion": str(self.store.revision)},
                    }
                    await response.write(json.dumps({"type": "BOOKMARK", "object": bookmark}).encode() + b"\n")
                    next_bookmark = now + self.settings.bookmark_interval_seconds
                if now >= deadline:
                    break
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.close_watch(watcher)
            self.faults.watch_closed(dropped)
        return response

    async def _next_event(self, watcher: Watcher, dropped: asyncio.Event, timeout: float) -> Any:
        if not watcher.queue.empty():
            return watcher.queue.get_nowait()
        getter = asyncio.ensure_future(watcher.queue.get())
        dropper = asyncio.ensure_future(dropped.wait())
        try:
            done, _ = await asyncio.wait(
                {getter, dropper}, timeout=max(timeout, 0), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (getter, dropper):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if getter in done and not dropped.is_set():
            return getter.result()
        if getter in done:
            watcher.queue.put_nowait(getter.result())
        return None


async def _body(raw: aiohttp.web.BaseRequest, default: Any = None) -> Any:
    content_type = raw.headers.get("Content-Type", "")
    if "protobuf" in content_type:
        return protobuf.decode(await raw.read())
    if "cbor" in content_type:
        raise errors.unsupported_media_type(content_type, ["application/json", "application/yaml"])
    text = await raw.text()
    if not text.strip():
        if default is not None:
            return default
        raise errors.bad_request("the request has no body")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if "yaml" in raw.headers.get("Content-Type", ""):
            import yaml

            return yaml.safe_load(text)
        raise errors.bad_request(f"the request body is not valid JSON: {exc}") from exc
