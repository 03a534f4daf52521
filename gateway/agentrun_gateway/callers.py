"""Who calls the gateway's HTTP doors and what they may do: a Kubernetes bearer token (TokenReview, then
SubjectAccessReview for the verb on agentruns in the namespace, or for create on agentrunapprovals to decide a
waiting call), or an API key bound to one namespace (which never decides: see ``may_decide``).

Every denial looks like absence to the caller: a door answers 404 whether the namespace is not the caller's or
the run does not exist, so a caller never learns what exists where it may not look.
"""

import enum
import hashlib
from dataclasses import dataclass

from agentrun_api import approval
from agentrun_api.constants import PLURAL
from agentrun_gateway import api_keys
from agentrun_gateway.auth import SingleFlight, TtlCache
from agentrun_gateway.kube import Identity, KubeApi
from agentrun_gateway.runs_kube import RunsKube


class Verb(enum.StrEnum):
    """The RBAC verbs on agentruns each door's operation is checked against."""

    CREATE = "create"
    GET = "get"
    LIST = "list"
    PATCH = "patch"  # cancel


@dataclass(frozen=True)
class Caller:
    principal: str  # stable and unique per caller: "user:<name>" or "apikey:<id>"; it keys idempotency and limits
    identity: Identity | None = None  # a Kubernetes user, checked by SubjectAccessReview
    key_namespace: str = ""  # an API key's one namespace

    @property
    def uses_api_key(self) -> bool:
        return self.identity is None


class Callers:
    def __init__(self, kube: KubeApi, runs: RunsKube, keys_namespace: str, cache_seconds: float) -> None:
        self._kube = kube
        self._runs = runs
        self._keys_namespace = keys_namespace
        # Keyed by a digest, so no presented token is kept in memory in the clear.
        self._callers: TtlCache[bytes, Caller | None] = TtlCache(cache_seconds)
        self._flights: SingleFlight[bytes, Caller | None] = SingleFlight()
        self._decisions: TtlCache[tuple[str, str, str, str, str], bool] = TtlCache(cache_seconds)

    async def authenticate(self, authorization: str | None) -> Caller | None:
        """The caller behind an ``Authorization: Bearer ...`` header, or None (answer 401)."""
        scheme, _, presented = (authorization or "").partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        cached = self._callers.get(digest)
        if cached is not None:
            return cached
        caller = await self._flights.run(digest, lambda: self._lookup(presented))
        if caller is not None:  # an unknown one is asked again: the key or token may be made right now
            self._callers.put(digest, caller)
        return caller

    async def _lookup(self, presented: str) -> Caller | None:
        key = api_keys.parse(presented)
        if key is not None:
            if not self._keys_namespace:
                return None
            data = await self._runs.get_secret_data(self._keys_namespace, key.secret_name)
            namespace = api_keys.bound_namespace(key, data) if data is not None else None
            return Caller(f"apikey:{key.key_id}", key_namespace=namespace) if namespace else None
        identity = await self._kube.authenticate(presented)
        return Caller(f"user:{identity.username}", identity=identity) if identity is not None else None

    async def may(self, caller: Caller, verb: Verb, namespace: str, name: str = "") -> bool:
        """Whether the caller may do ``verb`` on agentruns in the namespace (on the one run ``name``)."""
        if caller.identity is None:
            return namespace == caller.key_namespace
        return await self._reviewed(caller.identity, caller.principal, verb.value, namespace, name, PLURAL)

    async def may_decide(self, caller: Caller, namespace: str) -> bool:
        """Whether the caller may approve or deny waiting calls in the namespace: the right the kubectl path needs,
        create on agentrunapprovals. Never an API key: it stands for an application, not a person answerable for
        a decision, and the same key submits runs, so its holder would approve their own."""
        if caller.identity is None:
            return False
        return await self._reviewed(caller.identity, caller.principal, "create", namespace, "", approval.PLURAL)

    async def _reviewed(
        self, identity: Identity, principal: str, verb: str, namespace: str, name: str, resource: str
    ) -> bool:
        decision_key = (principal, verb, namespace, name, resource)
        cached = self._decisions.get(decision_key)
        if cached is not None:
            return cached
        allowed = await self._runs.may(identity, verb, namespace, name, resource)
        self._decisions.put(decision_key, allowed)
        return allowed
