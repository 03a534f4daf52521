"""Who may read a run's stream: the holder of its stream token, or a Kubernetes user allowed to get it."""

import asyncio
import enum
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from agentrun_gateway import watch_session
from agentrun_gateway.kube import KubeApi
from agentrun_gateway.watch_session import WatchSession

K = TypeVar("K")
V = TypeVar("V")

# Bounds the caches: a flood of distinct bad tokens must not grow memory without limit.
CACHE_MAX_ENTRIES = 10_000


class Decision(enum.Enum):
    ALLOWED = "allowed"
    UNAUTHENTICATED = "unauthenticated"  # 401: no token, or one that is neither the run's nor a valid Kubernetes token
    FORBIDDEN = "forbidden"  # 403: a valid Kubernetes identity without `get` on the AgentRun


class TtlCache(Generic[K, V]):
    """A small LRU with expiry: lookups are answered from memory for ``ttl`` seconds."""

    def __init__(self, ttl: float, max_entries: int = CACHE_MAX_ENTRIES) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None or item[0] < time.monotonic():
            self._items.pop(key, None)
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: K, value: V) -> None:
        self._items[key] = (time.monotonic() + self._ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)

    def drop(self, key: K) -> None:
        self._items.pop(key, None)


class SingleFlight(Generic[K, V]):
    """Concurrent lookups of one key share one call: a hundred readers reconnecting at once after a
    gateway restart cost the API server one request per run, not a hundred."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            value = await call()
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # marks it retrieved when no one else waits
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del self._running[key]


class StreamTokens:
    """The runs' stream tokens, read from their Secrets (the operator grants the gateway each one by name), cached
    briefly."""

    def __init__(self, kube: KubeApi, ttl: float) -> None:
        self._kube = kube
        self._cache: TtlCache[tuple[str, str], str | None] = TtlCache(ttl)
        self._flights: SingleFlight[tuple[str, str], str | None] = SingleFlight()

    async def get(self, namespace: str, run: str) -> str | None:
        key = (namespace, run)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        token = await self._flights.run(key, lambda: self._kube.stream_token(namespace, run))
        if token is not None:  # a missing Secret is not cached: the operator may be creating it right now
            self._cache.put(key, token)
        return token

    def forget(self, namespace: str, run: str) -> None:
        """The runner rejected the cached token: the Secret was replaced."""
        self._cache.drop((namespace, run))


class Authenticator:
    def __init__(self, kube: KubeApi, tokens: StreamTokens, ttl: float) -> None:
        self._kube = kube
        self._tokens = tokens
        # Keyed by a digest, so no presented token is kept in memory in the clear.
        self._decisions: TtlCache[tuple[str, str, bytes], Decision] = TtlCache(ttl)

    async def decide(self, namespace: str, run: str, authorization: str | None, session: str | None = None) -> Decision:
        """``session``: the watch page's cookie (``watch_session``), used when no Authorization header came."""
        scheme, _, presented = (authorization or "").partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            return await self._decide_session(namespace, run, session)
        stream_token = await self._tokens.get(namespace, run)
        # compare_digest takes the same time wherever the first difference is.
        if stream_token is not None and hmac.compare_digest(presented.encode(), stream_token.encode()):
            return Decision.ALLOWED
        key = (namespace, run, hashlib.sha256(presented.encode()).digest())
        cached = self._decisions.get(key)
        if cached is not None:
            return cached
        identity = await self._kube.authenticate(presented)
        if identity is None:
            decision = Decision.UNAUTHENTICATED
        elif await self._kube.may_read_run(identity, namespace, run):
            decision = Decision.ALLOWED
        else:
            decision = Decision.FORBIDDEN
        self._decisions.put(key, decision)
        return decision

    async def _decide_session(self, namespace: str, run: str, session: str | None) -> Decision:
        if not session:
            return Decision.UNAUTHENTICATED
        stream_token = await self._tokens.get(namespace, run)
        if stream_token is not None and watch_session.valid(stream_token, namespace, run, session):
            return Decision.ALLOWED
        return Decision.UNAUTHENTICATED

    async def issue_session(self, namespace: str, run: str, lifetime_seconds: float) -> WatchSession | None:
        """A watch page sign-in for a reader already allowed; None when the run has no stream token (yet)."""
        stream_token = await self._tokens.get(namespace, run)
        if stream_token is None:
            return None
        return watch_session.issue(stream_token, namespace, run, lifetime_seconds)
