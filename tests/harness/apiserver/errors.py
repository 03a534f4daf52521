"""Errors rendered as the `kind: Status` bodies kube-apiserver returns (reasons as in metav1.StatusReason)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class ApiError(Exception):
    """A failed API call: HTTP status, the apiserver's reason string, a message and optional details."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})

    def status(self) -> dict[str, Any]:
        """The `Status` object kube-apiserver sends for a failure."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _details(group: str, kind_plural: str, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": kind_plural}
    if group:
        details["group"] = group
    return details


def qualified(group: str, plural: str) -> str:
    """The `plural.group` form the apiserver uses in messages (`agentruns.agentrun.dev`, `configmaps`)."""
    return f"{plural}.{group}" if group else plural


def not_found(group: str, plural: str, name: str) -> ApiError:
    """404 NotFound for a missing object: `configmaps "x" not found`."""
    return ApiError(
        404, "NotFound", f'{qualified(group, plural)} "{name}" not found', details=_details(group, plural, name)
    )


def already_exists(group: str, plural: str, name: str) -> ApiError:
    """409 AlreadyExists for a create of an existing name."""
    return ApiError(
        409,
        "AlreadyExists",
        f'{qualified(group, plural)} "{name}" already exists',
        details=_details(group, plural, name),
    )


def conflict(group: str, plural: str, name: str, why: str) -> ApiError:
    """409 Conflict for a stale resourceVersion or failed precondition (optimistic concurrency)."""
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(group, plural)} "{name}": {why}',
        details=_details(group, plural, name),
    )


def invalid(
    group: str, kind: str, name: str, causes: Sequence[Mapping[str, str]], summary: str | None = None
) -> ApiError:
    """422 Invalid with `details.causes`, as the apiserver's field validation reports it."""
    text = summary or ", ".join(f"{c['field']}: {c['message']}" for c in causes)
    details = _details(group, kind, name)
    details["causes"] = [dict(c) for c in causes]
    qualified_kind = f"{kind}.{group}" if group else kind
    return ApiError(422, "Invalid", f'{qualified_kind} "{name}" is invalid: {text}', details=details)


def bad_request(message: str) -> ApiError:
    """400 BadRequest (malformed body, mismatched names, unsupported patch)."""
    return ApiError(400, "BadRequest", message)


def unprocessable_patch(message: str) -> ApiError:
    """422 for a well-formed JSON patch that cannot be applied (a failed test, a missing path), as the
    apiserver's patch handler answers it; kopf relies on this code to retry its optimistic patches."""
    return ApiError(422, "Invalid", message)


def method_not_allowed(message: str) -> ApiError:
    """405 MethodNotAllowed for a verb the resource does not support."""
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str, accepted: Sequence[str]) -> ApiError:
    """415 UnsupportedMediaType for a patch type the resource does not accept (e.g. strategic merge on a CR)."""
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: {', '.join(accepted)}"
        + (f" (got {content_type})" if content_type else ""),
    )


def gone(message: str) -> ApiError:
    """410 Gone/Expired for a watch from a resourceVersion older than the retained history."""
    return ApiError(410, "Expired", message)


def forbidden(group: str, plural: str, name: str, why: str) -> ApiError:
    """403 Forbidden, e.g. creating in a terminating namespace."""
    return ApiError(
        403,
        "Forbidden",
        f'{qualified(group, plural)} "{name}" is forbidden: {why}',
        details=_details(group, plural, name),
    )


def resource_not_found(path: str) -> ApiError:
    """404 NotFound for a URL that names no served resource."""
    return ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
