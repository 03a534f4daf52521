"""Who may use a ClusterThrottlePool: the RBAC verb ``use`` on it, asked of the API server.

The subject is the run's ServiceAccount (``<run>-runner``, which the operator creates for every run),
with the groups the API server gives every ServiceAccount token, so a ClusterRoleBinding may grant a
whole namespace (group ``system:serviceaccounts:<namespace>``) or one run. The review names no
namespace: the pool is cluster-scoped, so only ClusterRoleBindings count and a tenant's own
RoleBindings cannot grant it. Answers (yes and no) are cached for a short while, so a busy pool costs
one review per run per cache period, and a grant or revocation takes effect within that period.
"""

from collections.abc import Callable
from typing import Protocol

import aiohttp

from agentrun_api import clusterthrottlepool, constants
from agentrun_operator.children import identity_name
from agentrun_operator.kube import ApiError, KubeClient

_REVIEWS_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


class PoolAccess(Protocol):
    async def may_use(self, namespace: str, run: str, pool: str) -> bool:
        """True when the run (of namespace) may draw permits from the ClusterThrottlePool named pool."""
        ...


class AccessLookupError(Exception):
    """The API server could not be asked; the caller should retry."""


def how_to_grant(namespace: str, run: str, pool: str) -> str:
    """What an admin grants so that the run may use the pool, for the refusal message."""
    return (
        f"namespace {namespace!r} may not use ClusterThrottlePool {pool!r}: grant the verb "
        f"{clusterthrottlepool.USE_VERB!r} on {clusterthrottlepool.PLURAL}/{pool} (apiGroup {constants.GROUP}) "
        f"with a ClusterRoleBinding to the group system:serviceaccounts:{namespace} "
        f"(or to ServiceAccount {namespace}/{identity_name(run)})"
    )


class SubjectAccessReviewAccess:
    """Asks the API server with a SubjectAccessReview for the run's ServiceAccount."""

    def __init__(self, kube: KubeClient, *, cache_seconds: float, clock: Callable[[], float]) -> None:
        self._kube = kube
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._answers: dict[tuple[str, str, str], tuple[bool, float]] = {}

    async def may_use(self, namespace: str, run: str, pool: str) -> bool:
        key = (namespace, run, pool)
        now = self._clock()
        cached = self._answers.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        allowed = await self._review(namespace, run, pool)
        if len(self._answers) > 1024:
            self._answers = {k: v for k, v in self._answers.items() if v[1] > now}
        self._answers[key] = (allowed, now + self._cache_seconds)
        return allowed

    async def _review(self, namespace: str, run: str, pool: str) -> bool:
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:{namespace}:{identity_name(run)}",
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
                "resourceAttributes": {
                    "group": constants.GROUP,
                    "resource": clusterthrottlepool.PLURAL,
                    "name": pool,
                    "verb": clusterthrottlepool.USE_VERB,
                },
            },
        }
        try:
            answer = await self._kube.request("POST", _REVIEWS_PATH, body=review)
        except ApiError as error:
            raise AccessLookupError(f"SubjectAccessReview failed with HTTP {error.status}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise AccessLookupError(f"SubjectAccessReview failed: {type(error).__name__}") from None
        return bool(answer.get("status", {}).get("allowed"))


class StaticAccess:
    """A fixed table of (namespace, pool) pairs allowed, for a permit server outside a cluster (tests, benchmarks)."""

    def __init__(self, allowed: set[tuple[str, str]]) -> None:
        self._allowed = frozenset(allowed)

    async def may_use(self, namespace: str, run: str, pool: str) -> bool:
        return (namespace, pool) in self._allowed
