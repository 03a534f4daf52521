"""The hook through which create/update of custom resources is validated against the CRD (schema, CEL, defaults)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol


class CustomResourceAdmission(Protocol):
    """What the apiextensions server does to a custom resource before storing it.

    `admit` validates and defaults the whole object (spec, metadata) on create (`old is None`) and update;
    `admit_status` does the same for a write to the status subresource. Both return the object to store, or raise
    an exception whose `str()` is the apiserver's message and whose `.errors` lists field errors (see `field_causes`).
    `strict` is `?fieldValidation=Strict`: unknown fields are errors, not silently pruned.
    """

    def admit(
        self, obj: Mapping[str, Any], old: Mapping[str, Any] | None, *, strict: bool = False
    ) -> dict[str, Any]: ...

    def admit_status(self, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> dict[str, Any]: ...


# Builds the admission of one CRD; returns None when the CRD is served without validation.
AdmissionFactory = Callable[[Mapping[str, Any]], CustomResourceAdmission | None]


def default_admission_factory() -> AdmissionFactory | None:
    """The project's real CRD admission (`agentrun_api.admission.CrdAdmission`), or None while that module does not
    exist yet (custom resources are then stored unvalidated)."""
    try:
        from agentrun_api.admission import CrdAdmission  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    factory: AdmissionFactory = CrdAdmission.from_crd
    return factory


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
