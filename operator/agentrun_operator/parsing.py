"""Turn an AgentRun manifest into a validated spec, or an error naming the field and the fix."""

from collections.abc import Mapping
from typing import Any

import pydantic

from agentrun_api.spec import AgentRunSpec
from agentrun_operator.children import MAX_RUN_NAME_LENGTH


class InvalidSpecError(ValueError):
    """The manifest cannot become a run; the message names the field (camelCase, as written)."""


def _location(loc: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def describe_validation_error(error: pydantic.ValidationError) -> str:
    problems = []
    for detail in error.errors(include_url=False, include_input=False):
        # Model-level checks have no location of their own; their message names the fields.
        problems.append(f"{_location(tuple(detail['loc']))}: {detail['msg']}")
    return "; ".join(problems)


def parse_spec(body: Mapping[str, Any]) -> AgentRunSpec:
    name = str(body.get("metadata", {}).get("name", ""))
    if len(name) > MAX_RUN_NAME_LENGTH:
        raise InvalidSpecError(
            f"metadata.name: at most {MAX_RUN_NAME_LENGTH} characters, so that the run's Service "
            f"'<name>-stream' stays a valid DNS label; {name!r} has {len(name)}"
        )
    raw = body.get("spec")
    if not isinstance(raw, Mapping):
        raise InvalidSpecError(
            "spec: required, an object with at least instructions, input, model, maxExecutionTime and maxIterations"
        )
    try:
        return AgentRunSpec.model_validate(dict(raw))
    except pydantic.ValidationError as error:
        raise InvalidSpecError(describe_validation_error(error)) from None
