"""Who may draw permits: a run, proven by its own stream token.

The runner already holds its run's stream token (env ``AGENTRUN_STREAM_TOKEN``, from the Secret
``<run>-stream-token``), so no second per-run Secret is minted: the permit server reads that Secret in
the pool's namespace and compares. Only digests of expected tokens are kept, for a short while.
"""

import hashlib
import hmac
from collections.abc import Callable
from typing import Protocol

import aiohttp

from agentrun_api import contract
from agentrun_operator.kube import ApiError, KubeClient


class CredentialVerifier(Protocol):
    async def verify(self, namespace: str, run: str, token: str) -> bool:
        """True when token is the credential of run in namespace."""
        ...


class CredentialLookupError(Exception):
    """The credential store could not be asked (API server unreachable); the caller should retry."""


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class StreamTokenVerifier:
    """Checks a presented token against the run's stream-token Secret, read through the Kubernetes API."""

    def __init__(self, kube: KubeClient, *, cache_seconds: float, clock: Callable[[], float]) -> None:
        self._kube = kube
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._expected: dict[tuple[str, str], tuple[bytes | None, float]] = {}

    async def verify(self, namespace: str, run: str, token: str) -> bool:
        key = (namespace, run)
        cached = self._expected.get(key)
        now = self._clock()
        if cached is None or cached[1] <= now:
            expected = await self._read_expected(namespace, run)
            # A missing Secret is remembered briefly too, so bad requests cannot hammer the API server.
            self._expected[key] = (expected, now + self._cache_seconds)
            self._forget_stale(now)
        else:
            expected = cached[0]
        return expected is not None and hmac.compare_digest(expected, _digest(token.encode()))

    async def _read_expected(self, namespace: str, run: str) -> bytes | None:
        name = contract.stream_token_secret_name(run)
        try:
            token = await self._kube.read_secret_key(namespace, name, contract.STREAM_TOKEN_KEY)
        except ApiError as error:
            if error.status == 403:
                return None
            raise CredentialLookupError(f"reading Secret {namespace}/{name} failed with HTTP {error.status}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise CredentialLookupError(f"reading Secret {namespace}/{name} failed: {type(error).__name__}") from None
        return None if not token else _digest(token)

    def _forget_stale(self, now: float) -> None:
        if len(self._expected) > 1024:
            for key in [k for k, (_, until) in self._expected.items() if until <= now]:
                del self._expected[key]


class StaticCredentials:
    """A fixed table of run credentials, for a permit server outside a cluster (tests, benchmarks)."""

    def __init__(self, tokens: dict[tuple[str, str], str]) -> None:
        self._digests = {key: _digest(token.encode()) for key, token in tokens.items()}

    async def verify(self, namespace: str, run: str, token: str) -> bool:
        expected = self._digests.get((namespace, run))
        return expected is not None and hmac.compare_digest(expected, _digest(token.encode()))
