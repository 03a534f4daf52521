"""The few Kubernetes API calls the gateway makes, over its aiohttp session.

Reads: the run's stream-token Secret (granted by name, per run, by the operator), the AgentRun (phase, heartbeat interval) and, for readers of
an ended run, its checkpoint segment ConfigMaps (the event log). Writes: TokenReview
and SubjectAccessReview, to check a reader's Kubernetes bearer token against RBAC.
"""

import base64
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from agentrun_api.constants import GROUP, PLURAL, VERSION
from agentrun_api.contract import STREAM_TOKEN_KEY, stream_token_secret_name
from agentrun_api.status import TERMINAL_PHASES, Phase
from agentrun_common.durations import parse_duration
from agentrun_gateway.settings import KUBE_CA_FILE_ENV

# Projected service account tokens rotate (hourly by default); re-read the file this often.
TOKEN_FILE_REREAD_SECONDS = 60.0


class KubeApiError(Exception):
    """The API server answered with an unexpected status or could not be reached."""


@dataclass(frozen=True)
class RunInfo:
    phase: Phase | None
    heartbeat_seconds: float

    @property
    def ended(self) -> bool:
        return self.phase in TERMINAL_PHASES


@dataclass(frozen=True)
class Identity:
    username: str
    groups: tuple[str, ...]
    uid: str = ""


class KubeApi:
    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, token_file: str | None, default_heartbeat_seconds: float
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._token_file = Path(token_file) if token_file else None
        self._token: str | None = None
        self._token_read_at = float("-inf")
        self._default_heartbeat = default_heartbeat_seconds

    def _headers(self) -> dict[str, str]:
        now = time.monotonic()
        if self._token_file is not None and now - self._token_read_at > TOKEN_FILE_REREAD_SECONDS:
            self._token_read_at = now
            try:
                self._token = self._token_file.read_text().strip() or None
            except OSError:
                self._token = None  # out of cluster (tests): the API server is reached without a token
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, absent: tuple[int, ...] = (404,)
    ) -> dict[str, Any] | None:
        """The answer's JSON object, or None when the status is one of ``absent``."""
        try:
            async with self._session.request(method, self._base + path, json=body, headers=self._headers()) as resp:
                if resp.status in absent:
                    return None
                if resp.status >= 300:
                    raise KubeApiError(f"{method} {path}: HTTP {resp.status}")
                payload = await resp.json(content_type=None)
        except aiohttp.ClientConnectorCertificateError as error:
            raise KubeApiError(
                f"{method} {path}: the API server's certificate does not verify ({error.certificate_error}); set "
                f"{KUBE_CA_FILE_ENV} to the CA bundle that signed it"
            ) from None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise KubeApiError(f"{method} {path}: {type(error).__name__}: {error}") from None
        if not isinstance(payload, dict):
            raise KubeApiError(f"{method} {path}: the answer is not a JSON object")
        return payload

    async def stream_token(self, namespace: str, run: str) -> str | None:
        """The run's stream token, or None when its Secret (or the key) does not exist or is not granted to us."""
        # The gateway may read only the stream-token Secrets the operator granted it (Role <run>-stream-reader):
        # for a run that does not exist, or whose grant is still being created, the API server answers 403.
        path = f"/api/v1/namespaces/{namespace}/secrets/{stream_token_secret_name(run)}"
        secret = await self._request("GET", path, absent=(403, 404))
        encoded = (secret or {}).get("data", {}).get(STREAM_TOKEN_KEY)
        if not encoded:
            return None
        return base64.b64decode(encoded).decode()

    async def configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A ConfigMap's data, or None when it does not exist."""
        obj = await self._request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        if obj is None:
            return None
        data = obj.get("data") or {}
        return {str(key): str(value) for key, value in data.items()}

    async def run_info(self, namespace: str, run: str) -> RunInfo | None:
        """The run's phase and heartbeat interval, or None when the AgentRun does not exist."""
        obj = await self._request("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{run}")
        if obj is None:
            return None
        raw_phase = obj.get("status", {}).get("phase")
        phase = Phase(raw_phase) if raw_phase in set(Phase) else None
        heartbeat = obj.get("spec", {}).get("streaming", {}).get("heartbeatInterval")
        try:
            seconds = parse_duration(heartbeat) if heartbeat else self._default_heartbeat
        except ValueError:
            seconds = self._default_heartbeat
        return RunInfo(phase=phase, heartbeat_seconds=seconds)

    async def authenticate(self, token: str) -> Identity | None:
        """Who a Kubernetes bearer token belongs to (TokenReview), or None when it is not valid."""
        review = await self._request(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
        )
        status = (review or {}).get("status", {})
        if not status.get("authenticated"):
            return None
        user = status.get("user", {})
        return Identity(
            username=str(user.get("username", "")), groups=tuple(user.get("groups", ())), uid=str(user.get("uid", ""))
        )

    async def may_read_run(self, identity: Identity, namespace: str, run: str) -> bool:
        """Whether RBAC lets this identity ``get`` the AgentRun (SubjectAccessReview)."""
        review = await self._request(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": identity.username,
                    "groups": list(identity.groups),
                    "uid": identity.uid,
                    "resourceAttributes": {
                        "namespace": namespace,
                        "verb": "get",
                        "group": GROUP,
                        "resource": PLURAL,
                        "name": run,
                    },
                },
            },
        )
        return bool((review or {}).get("status", {}).get("allowed"))
