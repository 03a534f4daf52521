"""Idempotent submission, with the key-to-run mapping kept in Kubernetes itself.

The run's name is derived from (namespace, caller, Idempotency-Key), so every retry of a submission, from
any gateway replica, concurrent or hours later, asks the API server to create the same object: exactly one
create succeeds and the others get 409 AlreadyExists. The request's hash, kept in an annotation of the run,
then tells a retry (same body: the same run is returned) from a reuse of the key for another request (422).
A key is remembered as long as its AgentRun exists: the operator never deletes AgentRuns (the TTL after
finishing removes only their Jobs and pods), so until someone deletes the run.

Without a key, the gateway picks a random name itself, so its own retries of the create cannot make two runs.
"""

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from agentrun_api.constants import GROUP
from agentrun_common.kube import ApiError
from agentrun_gateway.refusals import RefusalError
from agentrun_gateway.runs_kube import JsonObject, RunsKube

ANNOTATION_REQUEST_HASH: Final = f"{GROUP}/request-sha256"
ANNOTATION_SUBMITTED_BY: Final = f"{GROUP}/submitted-by"
HEADER: Final = "Idempotency-Key"
KEY_MAX_LENGTH: Final = 255
_KEY_FORM = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces
RUN_NAME_PREFIX: Final = "run-"
_NAME_HASH_CHARACTERS: Final = 26  # 130 bits of base32: collisions are out of reach


def check_key(raw: str | None) -> str | None:
    """The header's key, or None when absent; a malformed one is refused naming the header."""
    if raw is None:
        return None
    if not _KEY_FORM.match(raw):
        raise RefusalError(
            400,
            "InvalidIdempotencyKey",
            f"the {HEADER} header must be 1 to {KEY_MAX_LENGTH} printable ASCII characters without spaces",
            fix="send a UUID, for example, and the same one on every retry of this request",
            field=f"header {HEADER}",
        )
    return raw


def request_digest(request: Mapping[str, Any]) -> str:
    """SHA-256 of the request's JSON in canonical form: key order and spacing do not change it."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def run_name(namespace: str, principal: str, key: str | None) -> str:
    """The run's name: derived from the key and the caller when there is a key, random otherwise."""
    seed = f"{namespace}\0{principal}\0{key}".encode() if key is not None else secrets.token_bytes(32)
    encoded = base64.b32encode(hashlib.sha256(seed).digest()).decode().lower()
    return RUN_NAME_PREFIX + encoded[:_NAME_HASH_CHARACTERS]


@dataclass(frozen=True)
class Submission:
    run: JsonObject
    created: bool  # False: a replay of an earlier submission with the same key and request


async def create_once(kube: RunsKube, namespace: str, body: JsonObject, principal: str, digest: str) -> Submission:
    """Create the AgentRun ``body`` (its name from ``run_name``), or return the one an earlier identical
    submission created; refuse (422) when the name is taken by a different request."""
    annotations = body["metadata"].setdefault("annotations", {})
    annotations[ANNOTATION_REQUEST_HASH] = digest
    annotations[ANNOTATION_SUBMITTED_BY] = principal
    name = body["metadata"]["name"]
    for _ in range(3):  # an existing run deleted between our create and our read: create again
        try:
            return Submission(await kube.create_run(namespace, body), created=True)
        except ApiError as error:
            if not error.conflict:
                raise
        existing = await kube.get_run(namespace, name)
        if existing is None:
            continue
        stored = existing.get("metadata", {}).get("annotations") or {}
        if stored.get(ANNOTATION_REQUEST_HASH) != digest or stored.get(ANNOTATION_SUBMITTED_BY) != principal:
            raise RefusalError(
                422,
                "IdempotencyKeyReused",
                f"this {HEADER} was already used for a different request (run {name}); a key names one request",
                fix="send a new key for a new request, or resend the original request unchanged to get its run",
                field=f"header {HEADER}",
            )
        return Submission(existing, created=False)
    raise ApiError(409, "Conflict", f"AgentRun {namespace}/{name} kept appearing and disappearing", what="submit")
