"""A run's spec from an AgentRunTemplate: the template's fixed part, the request's input, and only the
overrides the template allows. Every refusal names the request field and the fix."""

import copy
from collections.abc import Callable, Mapping
from typing import Any, Final

from pydantic import ValidationError

from agentrun_api import template
from agentrun_api.spec import AgentRunSpec
from agentrun_gateway.refusals import RefusalError
from agentrun_gateway.runs_kube import JsonObject, RunsKube

LABEL_TEMPLATE: Final = "agentrun.dev/template"  # on a run made from a template: the template's name


def _dotted(location: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in location)


def validated_spec(spec: Mapping[str, Any], field_of: Callable[[str], str]) -> JsonObject:
    """``spec`` checked as an AgentRun spec (the same model the operator parses with); the first problem is
    refused with 422, naming the request field ``field_of`` maps the spec path to."""
    try:
        AgentRunSpec.model_validate(spec)
    except ValidationError as error:
        problem = error.errors(include_url=False)[0]
        path = _dotted(tuple(problem["loc"]))
        field = field_of(path)
        raise RefusalError(
            422,
            "InvalidField",
            f"{field}: {problem['msg']}",
            fix=f"correct {field} (`kubectl explain agentrun.spec` describes every spec field and its bounds)",
            field=field,
        ) from None
    return dict(spec)


def _set_path(target: JsonObject, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value


def _flat(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"temperature": 0}} and {"model.temperature": 0} alike, as dotted paths."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and path not in template.OVERRIDES:
            flat.update(_flat(value, f"{path}."))
        else:
            flat[path] = value
    return flat


async def spec_from_template(
    kube: RunsKube, namespace: str, name: str, run_input: str, overrides: Mapping[str, Any]
) -> JsonObject:
    """The AgentRun spec of a request naming template ``name``."""
    stored = await kube.get_template(namespace, name)
    if stored is None:
        raise RefusalError(
            422,
            "TemplateNotFound",
            f"there is no {template.KIND} {name!r} in namespace {namespace}",
            fix=f"name one of the namespace's templates (`kubectl get {template.PLURAL} -n {namespace}`)",
            field="template",
        )
    spec = stored.get("spec") or {}
    allowed = set(spec.get("allowedOverrides") or [])
    run: JsonObject = copy.deepcopy(spec.get("run") or {})
    run["input"] = run_input
    for path, value in _flat(overrides).items():
        if path not in allowed:
            may = ", ".join(sorted(allowed)) or "nothing"
            raise RefusalError(
                422,
                "OverrideNotAllowed",
                f"template {name!r} does not let a request set {path} (it allows: {may})",
                fix=f"leave overrides.{path} out, or ask the template's owners to add it to allowedOverrides",
                field=f"overrides.{path}",
            )
        _set_path(run, path, value)
    set_paths = set(_flat(overrides))

    def field_of(path: str) -> str:
        if path == "input":
            return "input"
        if path in set_paths:
            return f"overrides.{path}"
        return f"template {name}: spec.run.{path}"

    return validated_spec(run, field_of)
