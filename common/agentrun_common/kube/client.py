"""One async Kubernetes API client for the operator, the runner and the stream gateway: one aiohttp session,
credentials read again on rotation, the common retry policy, and one error type.

Each process keeps its own domain calls (the operator's children, the runner's ConfigMaps, the gateway's
reviews and reads) as thin functions over ``KubeClient.request``.
"""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import aiohttp

from agentrun_common.kube.credentials import Credentials, CredentialsError
from agentrun_common.retry import RetryPolicy, parse_retry_after

DEFAULT_RETRY = RetryPolicy()

# Status 0: the server was not reached or did not answer.
UNREACHABLE = 0
# The reason of an ApiError for a server certificate that does not verify: not retried, it will not heal.
CERTIFICATE_NOT_VERIFIED = "CertificateNotVerified"


class ApiError(Exception):
    """A request failed: names the request and the object, and gives the API server's answer."""

    def __init__(
        self, status: int, reason: str, message: str, *, what: str = "", retry_after: float | None = None
    ) -> None:
        answer = f"HTTP {status} {reason}".rstrip() if status else reason
        super().__init__(f"{what}: {answer}: {message}" if what else f"{answer}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.what = what
        self.retry_after = retry_after  # seconds, from a 429's or 503's Retry-After header

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def unreachable(self) -> bool:
        return self.status == UNREACHABLE

    @property
    def retryable(self) -> bool:
        """Worth another attempt: the server is busy or was not reached (but not an untrusted certificate)."""
        if self.unreachable:
            return self.reason != CERTIFICATE_NOT_VERIFIED
        return RetryPolicy.retryable(self.status)


class KubeClient:
    """Requests to one API server. ``credentials`` is either fixed or a loader, called again when the server
    answers 401 (the token expired or its bound object is gone) so that a rewritten kubeconfig or a new
    login takes effect. Close it with ``close()``."""

    def __init__(
        self,
        credentials: Credentials | Callable[[], Credentials],
        *,
        timeout_seconds: float = 30.0,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self._load = credentials if callable(credentials) else (lambda: credentials)
        self.credentials = self._load()
        self._ssl = self.credentials.ssl_context()
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._retry = retry
        self._session: aiohttp.ClientSession | None = None  # made in the running loop, at first use

    @property
    def server(self) -> str:
        return self.credentials.server

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        what: str = "",
        decode: bool = True,
    ) -> Any:
        """The decoded answer (None for an empty one, or when ``decode`` is False: a large object nobody reads).
        Raises ``ApiError`` for an error answer, after the retry policy's attempts for a retryable one, and for an
        answer that is not JSON, decoded or not."""
        what = what or f"{method} {path}"
        reloaded = False
        attempt = 0
        while True:
            try:
                return await self._once(method, path, body, params, content_type, what, decode)
            except ApiError as error:
                if error.status == 401 and not reloaded:
                    reloaded = True
                    self._reload()
                    continue
                if not error.retryable or not self._retry.more_after(attempt):
                    raise
                await asyncio.sleep(self._retry.delay(attempt, error.retry_after))
                attempt += 1

    def _reload(self) -> None:
        with contextlib.suppress(CredentialsError):  # unreadable now: keep the last ones; the 401 stands
            self.credentials = self._load()

    async def _once(
        self,
        method: str,
        path: str,
        body: Any,
        params: Mapping[str, str] | None,
        content_type: str,
        what: str,
        decode: bool,
    ) -> Any:
        headers = self._headers(what)
        data = None if body is None else json.dumps(body)
        if data is not None:
            headers["Content-Type"] = content_type
        with _answer_errors(what):
            async with self._started_session().request(
                method,
                self.credentials.server + path,
                data=data,
                params=params,
                headers=headers,
                ssl=self._ssl,
                server_hostname=self.credentials.tls_server_name,
            ) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise _error(response.status, response.reason or "", raw, response.headers, what)
                if not raw:
                    return None
                if decode:
                    return json.loads(raw)
                # Not decoded, but an answer that is no JSON at all (a middlebox's page) is no proof of the write.
                if response.content_type != "application/json":
                    raise ValueError(f"Content-Type {response.content_type!r}")
                return None

    async def watch(
        self, path: str, *, params: Mapping[str, str] | None = None, timeout_seconds: int = 300, what: str = ""
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch of the collection ``path`` as the server sends them, until the server ends the
        watch after ``timeout_seconds``. Raises ``ApiError`` for an error answer and for an ERROR event (410 Gone:
        the resourceVersion asked for is too old); not retried here: the caller watches again from a new read."""
        what = what or f"watch {path}"
        query = {**(params or {}), "watch": "1", "timeoutSeconds": str(timeout_seconds)}
        # The session's total timeout would cut a long watch: only a silent connection is given up here.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total, sock_read=timeout_seconds + 30)
        with _answer_errors(what):
            async with self._started_session().get(
                self.credentials.server + path,
                params=query,
                headers=self._headers(what),
                ssl=self._ssl,
                server_hostname=self.credentials.tls_server_name,
                timeout=timeout,
            ) as response:
                if response.status >= 400:
                    if response.status == 401:
                        self._reload()  # the caller's next watch goes with the credentials read again
                    raise _error(response.status, response.reason or "", await response.read(), response.headers, what)
                async for line in response.content:
                    if not line.strip():
                        continue
                    event: dict[str, Any] = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise ApiError(
                            int(status.get("code") or 500),
                            str(status.get("reason") or "Error"),
                            str(status.get("message") or ""),
                            what=what,
                        )
                    yield event

    def _started_session(self) -> aiohttp.ClientSession:
        if self._session is None:  # made in the running loop, at first use
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    def _headers(self, what: str) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        try:
            authorization = self.credentials.authorization()
        except CredentialsError as error:
            raise ApiError(UNREACHABLE, "NoCredentials", str(error), what=what) from None
        if authorization:
            headers["Authorization"] = authorization
        return headers


@contextlib.contextmanager
def _answer_errors(what: str) -> Iterator[None]:
    """The failures of a request or a watch on the way, as an ``ApiError`` naming ``what``."""
    try:
        yield
    except aiohttp.ClientConnectorCertificateError as error:
        raise ApiError(
            UNREACHABLE,
            CERTIFICATE_NOT_VERIFIED,
            f"the API server's certificate does not verify against the CA bundle given ({error.certificate_error})",
            what=what,
        ) from None
    except (aiohttp.ClientError, TimeoutError) as error:
        raise ApiError(UNREACHABLE, "Unreachable", f"{type(error).__name__}: {error}", what=what) from None
    except ValueError as error:
        raise ApiError(UNREACHABLE, "BadAnswer", f"the answer is not JSON: {error}", what=what) from None


def _error(status: int, reason: str, raw: bytes, headers: Mapping[str, str], what: str) -> ApiError:
    text = raw.decode(errors="replace")
    try:
        detail = json.loads(text)
    except ValueError:
        detail = None
    if isinstance(detail, dict):
        reason, message = str(detail.get("reason") or reason), str(detail.get("message") or text[:500])
    else:
        message = text[:500]
    return ApiError(status, reason, message, what=what, retry_after=parse_retry_after(headers.get("Retry-After")))
