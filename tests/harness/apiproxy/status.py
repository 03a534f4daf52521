"""Failures rendered as the `kind: Status` bodies kube-apiserver answers with (reasons as in metav1.StatusReason)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp.web

# The reason kube-apiserver gives for a failure with this HTTP status (apierrors.NewGenericServerResponse).
REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Gone",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def reason_for(code: int) -> str:
    """The Status reason of an HTTP failure code; other 5xx codes are internal errors, as the API server says."""
    return REASONS.get(code, "InternalError" if code >= 500 else "BadRequest")


def status_body(code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `Status` object kube-apiserver sends for a failure."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = dict(details)
    return body


def status_response(
    code: int,
    reason: str,
    message: str,
    *,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> aiohttp.web.Response:
    """An HTTP response carrying a failure `Status`, with extra headers such as `Retry-After`."""
    response = aiohttp.web.Response(
        status=code,
        body=json.dumps(status_body(code, reason, message, details)).encode(),
        content_type="application/json",
    )
    for header, value in (headers or {}).items():
        response.headers[header] = value
    return response
