"""The AgentRunTemplate resource: a run's fixed part, declared once per namespace by a platform team.

An application that submits runs over HTTP (the stream gateway's runs API, and later its OpenAI-compatible
door) should not have to know model endpoints, API key Secrets, tools or limits. A template fixes all of
them; a request names the template, gives the run's input and may change only the fields the template lists
in ``allowedOverrides``. Anything else in a request is refused, naming the field.

The CRD's schema is generated from these models (``agentrun_api.crd``), as for AgentRun.
"""

from typing import Any, Final, Literal, cast, get_args

from pydantic import Field, create_model
from pydantic.fields import FieldInfo

from agentrun_api import constants
from agentrun_api.spec import AgentRunSpec, SpecModel

KIND: Final = "AgentRunTemplate"
PLURAL: Final = "agentruntemplates"
SINGULAR: Final = "agentruntemplate"
SHORT_NAMES: Final = ("art",)
CRD_NAME: Final = f"{PLURAL}.{constants.GROUP}"

# What a request supplies itself (input) or what controls a run after creation (suspend, cancel): never fixed by
# a template.
_NOT_IN_TEMPLATE: Final = frozenset({"input", "suspend", "cancel"})

# The fields a template may let a request change, as dotted camelCase paths into the AgentRun spec. Each is a
# knob an application has a reason to turn per request; none reaches a Secret, an endpoint or a tool.
Override = Literal[
    "instructions",
    "maxIterations",
    "maxExecutionTime",
    "tokenBudget",
    "ttlSecondsAfterFinished",
    "model.temperature",
    "model.maxOutputTokens",
]
OVERRIDES: Final[tuple[str, ...]] = get_args(Override)


def _run_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, info in AgentRunSpec.model_fields.items():
        if name in _NOT_IN_TEMPLATE:
            continue
        copied = FieldInfo.merge_field_infos(info)
        fields[name] = (info.annotation, copied)
    return fields


# AgentRunSpec without input, suspend and cancel: the same fields, bounds and descriptions, so a template
# cannot hold what a run could not.
TemplateRunSpec = cast(
    type[SpecModel],
    create_model(
        "TemplateRunSpec",
        __base__=SpecModel,
        __doc__="The run every request made from this template starts from: an AgentRun spec without input.",
        **_run_fields(),
    ),
)


class AgentRunTemplateSpec(SpecModel):
    """The fixed part of runs made from this template, and what a request may change."""

    run: TemplateRunSpec = Field(  # type: ignore[valid-type]
        description="The AgentRun spec every run from this template gets, without input (the request's)."
    )
    allowed_overrides: list[Override] = Field(
        default_factory=list,
        max_length=len(OVERRIDES),
        description="Spec fields a request may set itself, as dotted paths (for example model.temperature). "
        "A request that sets any other field is refused.",
    )
