"""Who may draw permits: a run, proven by its permit key.

The operator mints each run a random key in the Secret ``<run>-permit-key``, which only the runner pod
receives (env ``AGENTRUN_PERMIT_KEY``); the permit server reads that Secret in the pool's namespace and
compares. It is not the stream token: every reader of a run's stream holds that one, and a reader must
not be able to take permits, report penalties or pause a pool. Only digests of expected keys are kept,
for a short while.
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


class PermitKeyVerifier:
    """Checks a presented key against the run's permit-key Secret, read through the Kubernetes API."""

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
        name = contract.permit_key_secret_name(run)
        try:
            token = await self._kube.read_secret_key(namespace, name, contract.PERMIT_KEY_KEY)
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
