"""The hook through which create/update of custom resources is validated against the CRD (schema, CEL, defaults)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol


class CustomResourceAdmission(Protocol):
    """What the apiextensions server does to a custom resource before storing it.

    `admit` decodes, defaults and validates the whole object on create (`old is None`) and update; `admit_status`
    does the same for a write to the status subresource. Both return the object to store, or raise an exception
    with `.errors` (field errors) whose `str()` is the apiserver's message; when it also has `to_status()`, that
    Status is answered as is (422 Invalid, or 400 BadRequest for strict decoding). `strict` is
    `?fieldValidation=Strict`: unknown fields are errors instead of being pruned.
    """

    def admit(self, obj: Mapping[str, Any], old: Mapping[str, Any] | None, *, strict: bool) -> dict[str, Any]: ...

    def admit_status(self, obj: Mapping[str, Any], old: Mapping[str, Any], *, strict: bool) -> dict[str, Any]: ...


# Builds the admission of one CRD; returns None when the CRD is served without validation.
AdmissionFactory = Callable[[Mapping[str, Any]], CustomResourceAdmission | None]


def crd_admission(crd: Mapping[str, Any]) -> CustomResourceAdmission:
    """The project's CRD admission (the default): schema decoding and pruning, defaults, OpenAPI validation and CEL."""
    from agentrun_api.admission import CrdAdmission

    return CrdAdmission.from_crd(crd)


def _attribute(error: object, *names: str) -> str:
    for name in names:
        value = error.get(name) if isinstance(error, Mapping) else getattr(error, name, None)
        if value is not None:
            return str(value)
    return ""


def field_causes(exc: BaseException) -> list[dict[str, str]]:
    """The `details.causes` of a 422 Invalid: one `{reason, message, field}` per field error of the rejection."""
    causes = []
    for error in getattr(exc, "errors", None) or []:
        causes.append(
            {
                "reason": _attribute(error, "reason", "type") or "FieldValueInvalid",
                "message": _attribute(error, "message", "detail") or str(error),
                "field": _attribute(error, "field", "path"),
            }
        )
    if not causes:
        causes.append({"reason": "FieldValueInvalid", "message": str(exc), "field": ""})
    return causes
