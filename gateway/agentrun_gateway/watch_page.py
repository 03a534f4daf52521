"""The watch page: one small page per run, ``/runs/<namespace>/<name>/watch``, that follows the run's stream live.

- ``GET`` with ``Authorization: Bearer <token>`` (the run's stream token, or a Kubernetes token allowed to ``get``
  the AgentRun, as for the stream) or with the watch cookie: the page; a header sign-in also sets the cookie.
  Without either: a sign-in form (401).
- ``POST`` of that form (field ``token``): the cookie, and a redirect (303) to the page. The token travels in the
  request body, never in a URL that access logs keep.

The page reads ``./events`` (the run's stream) with the cookie (see ``watch_session``). Its script and style are
inlined and pinned by hash in a Content-Security-Policy that allows nothing else: no framework, no CDN, and no
script an agent's text could smuggle in (the script sets every such text as text, never as HTML).
"""

import base64
import hashlib
import html
import logging
import time
from collections.abc import Callable
from importlib import resources
from string import Template
from typing import Protocol

from aiohttp import web

from agentrun_api.names import is_dns_label, is_dns_subdomain
from agentrun_gateway.auth import Authenticator, Decision
from agentrun_gateway.kube import KubeApiError
from agentrun_gateway.relay import RunDirectory
from agentrun_gateway.watch_session import COOKIE_NAME, WatchSession, expiry_of

log = logging.getLogger(__name__)

PATH = "/runs/{namespace}/{name}/watch"


def _static(name: str) -> str:
    return resources.files("agentrun_gateway").joinpath("static", name).read_text(encoding="utf-8")


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


STYLE = _static("watch.css")
SCRIPT = _static("watch.js")
PAGE = Template(_static("watch.html"))
SIGN_IN = Template(_static("sign_in.html"))
PAGE_POLICY = (
    f"default-src 'none'; script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)}; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SIGN_IN_POLICY = (
    f"default-src 'none'; style-src {_csp_hash(STYLE)}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class WatchParts(Protocol):
    """What the page needs of the gateway's parts."""

    @property
    def auth(self) -> Authenticator: ...

    @property
    def runs(self) -> RunDirectory: ...


def _headers(policy: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": policy,
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }


def _text(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers=headers or None)


def _sign_in(namespace: str, run: str, status: int, problem: str = "") -> web.Response:
    body = SIGN_IN.substitute(namespace=namespace, run=run, style=STYLE, problem=html.escape(problem))
    headers = _headers(SIGN_IN_POLICY) | ({"WWW-Authenticate": "Bearer"} if status == 401 else {})
    return web.Response(status=status, text=body, content_type="text/html", charset="utf-8", headers=headers)


def _set_cookie(response: web.StreamResponse, request: web.Request, session: WatchSession, path: str) -> None:
    secure = request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
    response.set_cookie(
        COOKIE_NAME,
        session.value,
        path=path,
        max_age=max(int(session.expires_at - time.time()), 0),
        httponly=True,
        secure=secure,
        samesite="Lax",  # sent when a link to the page is followed, never with another site's requests
    )


def add_routes(app: web.Application, parts_of: Callable[[web.Application], WatchParts], session_seconds: float) -> None:
    """Serve the watch page on ``app``; ``parts_of`` gives the started gateway's authenticator and run directory."""

    def names(request: web.Request) -> tuple[str, str]:
        namespace, run = request.match_info["namespace"], request.match_info["name"]
        if not is_dns_label(namespace) or not is_dns_subdomain(run):
            raise web.HTTPBadRequest(text="namespace and run name must be Kubernetes object names\n")
        return namespace, run

    def run_path(namespace: str, run: str) -> str:
        return f"/runs/{namespace}/{run}/"

    async def page(request: web.Request) -> web.Response:
        namespace, run = names(request)
        parts = parts_of(request.app)
        authorization = request.headers.get("Authorization")
        cookie = request.cookies.get(COOKIE_NAME)
        try:
            decision = await parts.auth.decide(namespace, run, authorization, cookie)
            info = await parts.runs.get(namespace, run) if decision is Decision.ALLOWED else None
            session = (
                await parts.auth.issue_session(namespace, run, session_seconds)
                if info is not None and authorization
                else None
            )
        except KubeApiError as error:
            log.warning("Kubernetes API unavailable: %s", error)
            return _text(503, "the Kubernetes API is unavailable; reload shortly", **{"Retry-After": "2"})
        if decision is Decision.UNAUTHENTICATED:
            problem = "That sign-in is not valid for this run (or it expired)." if authorization or cookie else ""
            return _sign_in(namespace, run, 401, problem)
        if decision is Decision.FORBIDDEN:
            return _text(403, f"this identity may not get agentruns/{run} in namespace {namespace}")
        if info is None:
            return _text(404, f"no AgentRun {run} in namespace {namespace}")
        if authorization and session is None:
            return _text(404, f"AgentRun {run} has no stream (spec.streaming.enabled is false, or it is starting)")
        expires = session.expires_at if session is not None else expiry_of(cookie or "") or 0
        body = PAGE.substitute(
            namespace=namespace,
            run=run,
            phase=html.escape(info.phase.value if info.phase else "Pending"),
            session_expires=str(expires),
            style=STYLE,
            script=SCRIPT,
        )
        response = web.Response(text=body, content_type="text/html", charset="utf-8", headers=_headers(PAGE_POLICY))
        if session is not None:
            _set_cookie(response, request, session, run_path(namespace, run))
        return response

    async def sign_in(request: web.Request) -> web.Response:
        namespace, run = names(request)
        parts = parts_of(request.app)
        form = await request.post()
        token = form.get("token")
        if not isinstance(token, str) or not token.strip():
            return _sign_in(namespace, run, 401, "Enter a token.")
        try:
            decision = await parts.auth.decide(namespace, run, f"Bearer {token.strip()}")
            info = await parts.runs.get(namespace, run) if decision is Decision.ALLOWED else None
            session = await parts.auth.issue_session(namespace, run, session_seconds) if info is not None else None
        except KubeApiError as error:
            log.warning("Kubernetes API unavailable: %s", error)
            return _sign_in(namespace, run, 503, "The Kubernetes API is unavailable; try again shortly.")
        if decision is Decision.UNAUTHENTICATED:
            return _sign_in(
                namespace, run, 401, "That token is neither this run's stream token nor a Kubernetes token."
            )
        if decision is Decision.FORBIDDEN:
            return _sign_in(namespace, run, 403, f"That identity may not get agentruns/{run} in namespace {namespace}.")
        if session is None:
            return _sign_in(namespace, run, 404, f"No AgentRun {run} with a stream in namespace {namespace}.")
        response = web.Response(status=303, headers={"Location": request.path})
        _set_cookie(response, request, session, run_path(namespace, run))
        return response

    app.router.add_get(PATH, page)
    app.router.add_post(PATH, sign_in)
