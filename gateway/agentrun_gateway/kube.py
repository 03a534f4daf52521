"""The few Kubernetes API calls the gateway makes, over the shared client (``agentrun_common.kube``).

Reads: the run's stream-token Secret (granted by name, per run, by the operator), the AgentRun (uid, phase,
heartbeat interval) and, for readers of an ended run, the ConfigMaps its runner left (the event log). Writes:
TokenReview and SubjectAccessReview, to check a reader's Kubernetes bearer token against RBAC.
"""

import base64
import logging
from dataclasses import dataclass
from typing import Any

from agentrun_api.constants import GROUP, PLURAL, VERSION
from agentrun_api.contract import STREAM_TOKEN_KEY, stream_token_secret_name
from agentrun_api.status import TERMINAL_PHASES, Phase
from agentrun_common.durations import parse_duration
from agentrun_common.kube import ApiError, KubeClient
from agentrun_common.kube.client import CERTIFICATE_NOT_VERIFIED
from agentrun_common.retry import RetryPolicy
from agentrun_gateway.settings import KUBE_CA_FILE_ENV

log = logging.getLogger(__name__)

# A reader waits on these calls: a short retry, then the reader gets a 503 and retries itself.
READER_RETRY = RetryPolicy(attempts=3, first_backoff_seconds=0.2, max_backoff_seconds=1.0, max_retry_after_seconds=2.0)

# The one error type of an API call (named for the gateway's callers).
KubeApiError = ApiError


@dataclass(frozen=True)
class RunInfo:
    phase: Phase | None
    heartbeat_seconds: float
    uid: str  # what the run's checkpoint records and ConfigMaps are bound to

    @property
    def ended(self) -> bool:
        return self.phase in TERMINAL_PHASES


@dataclass(frozen=True)
class Identity:
    username: str
    groups: tuple[str, ...]
    uid: str = ""


SUBJECT_ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


def subject_access_review(identity: Identity, resource_attributes: dict[str, str]) -> dict[str, Any]:
    """The SubjectAccessReview asking whether ``identity`` may do what ``resource_attributes`` describe."""
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": identity.username,
            "groups": list(identity.groups),
            "uid": identity.uid,
            "resourceAttributes": resource_attributes,
        },
    }


class KubeApi:
    """The gateway's calls over the shared client, whose credentials read a rotated token file again."""

    def __init__(self, client: KubeClient, default_heartbeat_seconds: float) -> None:
        self._client = client
        self._default_heartbeat = default_heartbeat_seconds

    async def close(self) -> None:
        await self._client.close()

    async def _request(
        self,
        method: str,
        path: str,
        what: str,
        body: dict[str, Any] | None = None,
        *,
        absent: tuple[int, ...] = (404,),
    ) -> dict[str, Any] | None:
        """The answer, or None when the status is one of ``absent`` (the object does not exist)."""
        try:
            payload = await self._client.request(method, path, body=body, what=what)
        except ApiError as error:
            if error.status in absent:
                return None
            if error.reason == CERTIFICATE_NOT_VERIFIED:
                raise ApiError(
                    error.status,
                    error.reason,
                    f"{error.message}; set {KUBE_CA_FILE_ENV} to the CA bundle that signed it",
                    what=what,
                ) from None
            raise
        if not isinstance(payload, dict):
            raise ApiError(200, "BadAnswer", "the answer is not a JSON object", what=what)
        return payload

    async def stream_token(self, namespace: str, run: str) -> str | None:
        """The run's stream token, or None when its Secret (or the key) does not exist or is not granted to us."""
        # The gateway may read only the stream-token Secrets the operator granted it (Role <run>-stream-reader):
        # for a run that does not exist, or whose grant is still being created, the API server answers 403.
        name = stream_token_secret_name(run)
        secret = await self._request(
            "GET",
            f"/api/v1/namespaces/{namespace}/secrets/{name}",
            f"read Secret {namespace}/{name}",
            absent=(403, 404),
        )
        encoded = (secret or {}).get("data", {}).get(STREAM_TOKEN_KEY)
        if not encoded:
            return None
        return base64.b64decode(encoded).decode()

    async def owned_configmap_data(self, namespace: str, name: str, owner_uid: str) -> dict[str, str] | None:
        """A ConfigMap's data; None when it does not exist or is not owned by ``owner_uid`` (one left by a
        deleted run of the same name, or made by someone else, is not this run's)."""
        obj = await self._request(
            "GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}", f"read ConfigMap {namespace}/{name}"
        )
        if obj is None:
            return None
        owners = {ref.get("uid") for ref in obj.get("metadata", {}).get("ownerReferences") or []}
        if owner_uid not in owners:
            log.info("ConfigMap %s/%s is not owned by run uid %s; it is not replayed", namespace, name, owner_uid)
            return None
        data = obj.get("data") or {}
        return {str(key): str(value) for key, value in data.items()}

    async def run_info(self, namespace: str, run: str) -> RunInfo | None:
        """The run's phase and heartbeat interval, or None when the AgentRun does not exist."""
        obj = await self._request(
            "GET",
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{run}",
            f"read AgentRun {namespace}/{run}",
        )
        if obj is None:
            return None
        raw_phase = obj.get("status", {}).get("phase")
        phase = Phase(raw_phase) if raw_phase in set(Phase) else None
        heartbeat = obj.get("spec", {}).get("streaming", {}).get("heartbeatInterval")
        try:
            seconds = parse_duration(heartbeat) if heartbeat else self._default_heartbeat
        except ValueError:
            seconds = self._default_heartbeat
        return RunInfo(phase=phase, heartbeat_seconds=seconds, uid=str(obj.get("metadata", {}).get("uid", "")))

    async def authenticate(self, token: str) -> Identity | None:
        """Who a Kubernetes bearer token belongs to (TokenReview), or None when it is not valid."""
        review = await self._request(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            "create TokenReview",
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
            SUBJECT_ACCESS_REVIEWS,
            f"create SubjectAccessReview for agentruns/{run} in {namespace}",
            subject_access_review(
                identity, {"namespace": namespace, "verb": "get", "group": GROUP, "resource": PLURAL, "name": run}
            ),
        )
        return bool((review or {}).get("status", {}).get("allowed"))
