"""One model call: throttle permit, the official SDK, an outer deadline, and our own retries.

The SDK's retries are off (``max_retries=0``) so that Retry-After, the backoff and the run's
remaining budget are decided here: no attempt, wait or backoff may run past the run's deadline.

Requests go through the SDK's generic ``post`` with a body encoded here (``content=bytes`` is sent
as is): the SDK still builds the request (auth, headers, timeout), raises its typed errors and
parses the answer into its ``ChatCompletion`` and ``ChatCompletionChunk`` types, but no longer
encodes the whole conversation again on every call (see ``WireConversation``).

What a 2xx answer holds is checked before the runner reads it: the SDK hands back the text of an
answer that is not JSON (and an empty stream for one that is not an event stream) and builds its
types from JSON without validating them. An endpoint that answers with something else (a web page, a login portal: a
``baseURL`` that leads elsewhere) will answer the same way again, so the run ends at once.
"""

import asyncio
import email.utils
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeGuard
from urllib.parse import urlsplit, urlunsplit

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage

from agentrun_api.spec import ModelSpec
from agentrun_common.durations import parse_duration
from agentrun_runner.settings import RunnerSettings
from agentrun_runner.state import Message
from agentrun_runner.throttle import Limiter, MetersTokens, QueueTimeoutError

# Statuses a retry can fix (rate limits, overload, a server hiccup); any other 4xx is final.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
# Placeholder for endpoints that need no key (a local vLLM or Ollama): the SDK insists on one.
NO_API_KEY = "no-key"
# What ``chat.completions.create`` posts to, and its request options (bearer auth only).
CHAT_COMPLETIONS_PATH = "/chat/completions"
CHAT_OPTIONS: openai.RequestOptions = {"security": {"bearer_auth": True}}
# Characters of an answer that is not a chat completion quoted in the run's message: enough to
# recognize a page by its title, short enough for a status message.
ANSWER_PREVIEW_CHARS = 120
ANSWER_PREVIEW_BYTES = 4 * ANSWER_PREVIEW_CHARS  # up to 4 bytes a character in UTF-8
EVENT_STREAM = "text/event-stream"


def encode_json(value: Any) -> bytes:
    """JSON as the SDK encodes a request body: UTF-8, no spaces, NaN refused."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class WireConversation:
    """The conversation as the JSON array a request carries, each message encoded once.

    The SDK re-encodes (and re-walks against its typed schema) the whole conversation on every call:
    work that grows with the run's history, on the event loop. Messages are append-only (the
    checkpoint deltas rely on that too), so an encoded message never changes: a call encodes only the
    messages added since the previous call and joins the rest as bytes.
    """

    def __init__(self) -> None:
        self._source: list[Message] | None = None
        self._encoded: list[bytes] = []

    def encode(self, messages: list[Message]) -> bytes:
        if messages is not self._source or len(messages) < len(self._encoded):
            self._source, self._encoded = messages, []  # another conversation: start over
        self._encoded.extend(encode_json(message) for message in messages[len(self._encoded) :])
        return b"[" + b",".join(self._encoded) + b"]"


@dataclass(frozen=True)
class ModelAnswer:
    message: Message
    prompt_tokens: int
    completion_tokens: int


class ModelRejectedError(Exception):
    """An answer no retry can fix: a 4xx (bad key, unknown model, bad request), or a 2xx that is not
    a chat completion (model.baseURL leads to something other than an OpenAI-compatible API)."""


class ModelFailedError(Exception):
    """Retries ran out on 429, 5xx, timeouts or connection errors."""


class BudgetExhaustedError(Exception):
    """The run's deadline arrived before or during the call; the message says when ("during a model call")."""


class ThrottleTimeoutError(Exception):
    """No throttle permit within maxSecondsToWaitInQueue."""


class _MalformedAnswerError(Exception):
    """A 2xx answer without a choice: worth another attempt."""


def retry_after_seconds(headers: Any) -> float | None:
    """Retry-After (seconds or an HTTP date) or retry-after-ms, as seconds; None when absent."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(float(milliseconds) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def shown_url(url: str) -> str:
    """``url`` as a message may show it: no user info (a password) and no query (a key, at times)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    try:
        port = parts.port
    except ValueError:
        port = None
    return urlunsplit((parts.scheme, f"{host}:{port}" if port else host, parts.path, "", ""))


def answer_preview(body: bytes) -> str:
    """The start of an answer, safe to quote in a status message or a log line: one line of
    printable characters, cut at ANSWER_PREVIEW_CHARS."""
    text = body[:ANSWER_PREVIEW_BYTES].decode("utf-8", errors="replace")
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= ANSWER_PREVIEW_CHARS else text[:ANSWER_PREVIEW_CHARS] + "..."


def _innermost(error: BaseException) -> BaseException:
    """The first error in a chain of wrapped ones (the SDK's, the HTTP client's, the socket's): the
    one that says what went wrong, such as "Connect call failed" or "Name or service not known"."""
    seen = {id(error)}
    while (cause := error.__cause__ or error.__context__) is not None and id(cause) not in seen:
        error = cause
        seen.add(id(error))
    return error


def _connection_problem(error: openai.APIConnectionError, request_timeout: str) -> str:
    url = error.request.url
    host = f"[{url.host}]" if ":" in url.host else url.host
    where = f"{host}:{url.port}" if url.port else host
    if isinstance(error, openai.APITimeoutError):
        return f"no answer from {where} within model.requestTimeout ({request_timeout})"
    return f"could not reach {where}: {_innermost(error)}"


def _content_type(headers: Any) -> str:
    return answer_preview(headers.get("content-type", "").encode()) or "no Content-Type"


def _reads_as_completion(parsed: object) -> TypeGuard[ChatCompletion]:
    """What the runner reads of a ChatCompletion is there (the SDK does not validate its models)."""
    choices = getattr(parsed, "choices", None)
    return (
        isinstance(parsed, ChatCompletion)
        and isinstance(choices, list)
        and all(isinstance(getattr(choice, "message", None), ChatCompletionMessage) for choice in choices)
    )


def _reads_as_chunk(parsed: object) -> TypeGuard[ChatCompletionChunk]:
    return isinstance(parsed, ChatCompletionChunk) and isinstance(getattr(parsed, "choices", None), list)


def _rejection_message(spec: ModelSpec, error: openai.APIStatusError) -> str:
    status = error.status_code
    if status == 401:
        hint = (
            "the API key was refused: check the Secret named in model.apiKeySecretRef"
            if spec.api_key_secret_ref
            else "the endpoint wants an API key: set model.apiKeySecretRef"
        )
    elif status == 403:
        hint = "the API key may not use this model or endpoint"
    elif status == 404:
        hint = f"the endpoint does not know model {spec.name!r} (or model.baseURL is wrong: {shown_url(spec.base_url)})"
    else:
        hint = "the endpoint refused the request; a retry cannot fix it"
    return f"model endpoint answered {status}: {hint}"


class ModelClient:
    def __init__(
        self,
        spec: ModelSpec,
        *,
        api_key: str | None,
        limiter: Limiter | None,
        max_queue_wait_seconds: float,
        settings: RunnerSettings,
        rng: random.Random | None = None,
    ) -> None:
        self._spec = spec
        self._request_timeout = parse_duration(spec.request_timeout)
        self._client = openai.AsyncOpenAI(
            base_url=spec.base_url, api_key=api_key or NO_API_KEY, max_retries=0, timeout=self._request_timeout
        )
        self._limiter = limiter
        self._max_queue_wait = max_queue_wait_seconds
        self._settings = settings
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._conversation = WireConversation()
        # The body's fields before the conversation depend on the spec alone: encoded once per client.
        head: dict[str, Any] = {"model": spec.name, "stream": True} if spec.stream else {"model": spec.name}
        self._body_head = encode_json(head)[:-1] + b',"messages":'

    async def close(self) -> None:
        await self._client.close()

    async def complete(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]],
        *,
        remaining: Callable[[], float],
        on_token: Callable[[str], None] | None,
        on_queue_wait: Callable[[float], None],
        max_completion_tokens: int | None,
    ) -> ModelAnswer:
        attempts = self._spec.max_retries + 1
        # Encoded once per call: every attempt sends the same bytes.
        body = self._body(messages, tools, max_completion_tokens)
        last_problem = ""
        for attempt in range(attempts):
            if remaining() <= 0:
                raise BudgetExhaustedError("before a model call")
            delay: float | None = None
            try:
                return await self._attempt(body, remaining, on_token, on_queue_wait)
            except openai.APIStatusError as error:
                if error.status_code < 500 and error.status_code not in RETRYABLE_STATUSES:
                    raise ModelRejectedError(_rejection_message(self._spec, error)) from None
                last_problem = f"HTTP {error.status_code}"
                delay = retry_after_seconds(error.response.headers)
                if error.status_code == 429 and self._limiter is not None:
                    # Even without Retry-After: a pool lowers its rate on every reported 429.
                    self._limiter.penalize(delay or 0.0)
            except TimeoutError:
                last_problem = f"no answer within model.requestTimeout ({self._spec.request_timeout})"
            except openai.APIConnectionError as error:
                # The SDK's own timeout (APITimeoutError) is a connection error too.
                last_problem = _connection_problem(error, self._spec.request_timeout)
            except _MalformedAnswerError as error:
                last_problem = f"{type(error).__name__}: {error}"
            if attempt + 1 == attempts:
                break
            backoff = self._backoff(attempt)
            wait = max(backoff, delay) if delay is not None else backoff
            if wait >= remaining():
                raise ModelFailedError(
                    f"model call failed ({last_problem}) and the next retry in {wait:.1f}s would pass "
                    f"the run's time budget ({max(remaining(), 0):.1f}s left)"
                )
            await asyncio.sleep(wait)
        raise ModelFailedError(f"model call failed after {attempts} attempt(s): {last_problem}")

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._settings.retry_base_seconds * 2**attempt, self._settings.retry_max_backoff_seconds)
        return self._rng.uniform(ceiling / 2, ceiling)  # jitter spreads the retries of many runs

    async def _attempt(
        self,
        body: bytes,
        remaining: Callable[[], float],
        on_token: Callable[[str], None] | None,
        on_queue_wait: Callable[[float], None],
    ) -> ModelAnswer:
        permit = None
        if self._limiter is not None:
            budget = remaining()
            loop = asyncio.get_running_loop()
            asked_at = loop.time()
            try:
                permit, waited = await self._limiter.acquire(max_wait_seconds=min(self._max_queue_wait, budget))
            except QueueTimeoutError as error:
                on_queue_wait(loop.time() - asked_at)
                if budget < self._max_queue_wait:
                    raise BudgetExhaustedError(f"waiting for a throttle permit ({error})") from None
                raise ThrottleTimeoutError(
                    f"{error} (throttle.maxSecondsToWaitInQueue={self._max_queue_wait:g})"
                ) from None
            on_queue_wait(waited)
        try:
            budget = remaining()
            if budget <= 0:
                raise BudgetExhaustedError("before a model call")
            outer = min(self._request_timeout, budget)
            try:
                async with asyncio.timeout(outer):
                    answer = await self._call(body, on_token)
            except TimeoutError:
                if outer < self._request_timeout:
                    raise BudgetExhaustedError("during a model call") from None
                raise
            if isinstance(permit, MetersTokens):
                # Before the release, which carries the count to a tokensPerMinute pool.
                permit.record_tokens(answer.prompt_tokens + answer.completion_tokens)
            return answer
        finally:
            if permit is not None:
                await permit.release()

    async def _call(self, body: bytes, on_token: Callable[[str], None] | None) -> ModelAnswer:
        if not self._spec.stream:
            # The raw response, so that an answer that is not a chat completion can be described.
            raw = await self._client.post(
                CHAT_COMPLETIONS_PATH,
                cast_to=openai.AsyncAPIResponse[ChatCompletion],
                content=body,
                options=CHAT_OPTIONS,
            )
            response = await self._completion(raw)
            if not response.choices:
                raise _MalformedAnswerError("the endpoint answered without choices")
            reply = response.choices[0].message
            message: Message = {"role": "assistant", "content": reply.content}
            calls = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in reply.tool_calls or []
                if c.type == "function"
            ]
            if calls:
                message["tool_calls"] = calls
            usage = response.usage
            return ModelAnswer(
                message=message,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
            )

        stream = await self._client.post(
            CHAT_COMPLETIONS_PATH,
            cast_to=ChatCompletion,
            content=body,
            options=CHAT_OPTIONS,
            stream=True,
            stream_cls=openai.AsyncStream[ChatCompletionChunk],
        )
        content: list[str] = []
        slots: dict[int, dict[str, Any]] = {}
        prompt_tokens = completion_tokens = 0
        async for chunk in self._chunks(stream):
            if chunk.usage is not None:
                prompt_tokens = chunk.usage.prompt_tokens
                completion_tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                delta = choice.delta
                if delta.content:
                    content.append(delta.content)
                    if on_token is not None:
                        on_token(delta.content)
                for piece in delta.tool_calls or []:
                    slot = slots.setdefault(
                        piece.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                    )
                    if piece.id:
                        slot["id"] = piece.id
                    if piece.function is not None:
                        if piece.function.name:
                            slot["function"]["name"] = piece.function.name
                        if piece.function.arguments:
                            slot["function"]["arguments"] += piece.function.arguments
        message = {"role": "assistant", "content": "".join(content) if content else None}
        if slots:
            message["tool_calls"] = [slots[index] for index in sorted(slots)]
        return ModelAnswer(message=message, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    async def _completion(self, raw: openai.AsyncAPIResponse[ChatCompletion]) -> ChatCompletion:
        try:
            parsed: object = await raw.parse()
        except ValueError:  # a JSON Content-Type on a body that is not JSON
            parsed = None
        if _reads_as_completion(parsed):
            return parsed
        http = raw.http_response
        kind = _content_type(http.headers)
        raise self._not_a_completion(f"{http.status_code} with {kind}, not a chat completion", await raw.read())

    async def _chunks(self, stream: openai.AsyncStream[ChatCompletionChunk]) -> AsyncIterator[ChatCompletionChunk]:
        """The chunks of a streamed answer, each checked: the SDK would end a stream that is not an
        event stream (a web page has no events) empty, as if the model had answered nothing."""
        http = stream.response
        kind = _content_type(http.headers)
        if not kind.lower().startswith(EVENT_STREAM):
            start = b""
            try:
                async for piece in http.aiter_bytes():
                    start += piece
                    if len(start) >= ANSWER_PREVIEW_BYTES:
                        break
            finally:
                await stream.close()
            raise self._not_a_completion(f"{http.status_code} with {kind}, not a chat completion", start)
        odd_event = f"{http.status_code} with {kind}, but an event in it is not a chat completion chunk"
        try:
            async for chunk in stream:
                if not _reads_as_chunk(chunk):
                    raise self._not_a_completion(odd_event, b"")
                yield chunk
        except json.JSONDecodeError as error:  # an event whose data is not JSON
            raise self._not_a_completion(odd_event, error.doc.encode(), quoted="the event's data") from None
        finally:
            await stream.close()

    def _not_a_completion(self, what: str, start: bytes, quoted: str = "the answer") -> ModelRejectedError:
        """The run's message when ``what`` came back for a chat completion; ``start`` is how it began."""
        message = (
            f"model endpoint answered {what}: check spec.model.baseURL ({shown_url(self._spec.base_url)}), "
            "which must be the base URL of an OpenAI-compatible API (on most servers it ends in /v1)"
        )
        if start:
            message += f"; {quoted} began {answer_preview(start)!r}"
        return ModelRejectedError(message)

    def _body(self, messages: list[Message], tools: list[dict[str, Any]], max_completion_tokens: int | None) -> bytes:
        """The request body ``chat.completions.create`` would send for these arguments (same fields,
        same key order, same encoding), with the conversation encoded once per message."""
        after: dict[str, Any] = {}
        if max_completion_tokens is not None:
            # Not the deprecated max_tokens, which reasoning models refuse with a 400.
            after["max_completion_tokens"] = max_completion_tokens
        if self._spec.stream:
            after["stream_options"] = {"include_usage": True}
        if self._spec.temperature is not None:
            after["temperature"] = self._spec.temperature
        if tools:
            after["tools"] = tools
        parts = [self._body_head, self._conversation.encode(messages)]
        parts.append(b"," + encode_json(after)[1:] if after else b"}")
        return b"".join(parts)
