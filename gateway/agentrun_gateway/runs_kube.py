"""The Kubernetes calls of the gateway's HTTP doors, over the shared client: AgentRuns (create, get, list,
cancel), AgentRunApprovals (create, get), AgentRunTemplates, API key Secrets, and SubjectAccessReview."""

from typing import Any

from agentrun_api import approval, template
from agentrun_api.constants import GROUP, PLURAL, VERSION
from agentrun_common.kube import ApiError, KubeClient
from agentrun_gateway.kube import SUBJECT_ACCESS_REVIEWS, Identity, subject_access_review

JsonObject = dict[str, Any]


def _runs_path(namespace: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"


def _approvals_path(namespace: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{approval.PLURAL}"


class RunsKube:
    def __init__(self, client: KubeClient) -> None:
        self._client = client

    async def _object(self, method: str, path: str, what: str, **kwargs: Any) -> JsonObject:
        answer = await self._client.request(method, path, what=what, **kwargs)
        if not isinstance(answer, dict):
            raise ApiError(200, "BadAnswer", "the answer is not a JSON object", what=what)
        return answer

    async def _object_or_none(self, path: str, what: str) -> JsonObject | None:
        try:
            return await self._object("GET", path, what)
        except ApiError as error:
            if error.not_found:
                return None
            raise

    async def create_run(self, namespace: str, body: JsonObject) -> JsonObject:
        """The created AgentRun; ApiError 409 when one of that name exists."""
        name = body["metadata"]["name"]
        return await self._object("POST", _runs_path(namespace), f"create AgentRun {namespace}/{name}", body=body)

    async def get_run(self, namespace: str, name: str) -> JsonObject | None:
        return await self._object_or_none(f"{_runs_path(namespace)}/{name}", f"read AgentRun {namespace}/{name}")

    async def list_runs(self, namespace: str, limit: int, continue_token: str) -> JsonObject:
        params = {"limit": str(limit)}
        if continue_token:
            params["continue"] = continue_token
        return await self._object("GET", _runs_path(namespace), f"list AgentRuns in {namespace}", params=params)

    async def cancel_run(self, namespace: str, name: str) -> JsonObject | None:
        """Set spec.cancel (the one-way switch the CRD allows); None when the run does not exist."""
        try:
            return await self._object(
                "PATCH",
                f"{_runs_path(namespace)}/{name}",
                f"cancel AgentRun {namespace}/{name}",
                body={"spec": {"cancel": True}},
                content_type="application/merge-patch+json",
            )
        except ApiError as error:
            if error.not_found:
                return None
            raise

    async def create_approval(self, namespace: str, body: JsonObject) -> JsonObject:
        """The created AgentRunApproval; ApiError 409 when the call already has one."""
        name = body["metadata"]["name"]
        return await self._object(
            "POST", _approvals_path(namespace), f"create {approval.KIND} {namespace}/{name}", body=body
        )

    async def get_approval(self, namespace: str, name: str) -> JsonObject | None:
        return await self._object_or_none(
            f"{_approvals_path(namespace)}/{name}", f"read {approval.KIND} {namespace}/{name}"
        )

    async def get_template(self, namespace: str, name: str) -> JsonObject | None:
        return await self._object_or_none(
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{template.PLURAL}/{name}",
            f"read {template.KIND} {namespace}/{name}",
        )

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's data (base64 values), or None when it does not exist."""
        secret = await self._object_or_none(f"/api/v1/namespaces/{namespace}/secrets/{name}", f"read Secret {name}")
        if secret is None:
            return None
        return {str(key): str(value) for key, value in (secret.get("data") or {}).items()}

    async def whoami(self) -> str:
        """The user this client's own credentials authenticate as (a SelfSubjectReview, allowed to everyone)."""
        review = await self._object(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            "create SelfSubjectReview",
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
        username = ((review.get("status") or {}).get("userInfo") or {}).get("username")
        if not isinstance(username, str) or not username:
            raise ApiError(200, "BadAnswer", "the SelfSubjectReview names no user", what="create SelfSubjectReview")
        return username

    async def may(self, identity: Identity, verb: str, namespace: str, name: str = "", resource: str = PLURAL) -> bool:
        """Whether RBAC lets the identity do ``verb`` on ``resource`` (one, by ``name``) in the namespace."""
        attributes = {"namespace": namespace, "verb": verb, "group": GROUP, "resource": resource}
        if name:
            attributes["name"] = name
        review = await self._object(
            "POST",
            SUBJECT_ACCESS_REVIEWS,
            f"create SubjectAccessReview for {verb} {resource} in {namespace}",
            body=subject_access_review(identity, attributes),
        )
        return bool(review.get("status", {}).get("allowed"))
