"""Generate the AgentRun and ThrottlePool CustomResourceDefinitions from the pydantic models.

The models are the single source of the schema: `make crds` writes `crds/agentruns.agentrun.dev.yaml`
and `crds/throttlepools.agentrun.dev.yaml` from here and a test fails when a committed file differs.
Pydantic's JSON Schema is turned into a Kubernetes structural schema: references inlined, nullable unions collapsed (an optional field is an
absent field), titles dropped, CEL rules kept in ``x-kubernetes-validations``.
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from agentrun_api import approval, clusterthrottlepool, constants, mcpserver, template, throttlepool
from agentrun_api import names as run_names
from agentrun_api.spec import MUTABLE_SPEC_FIELDS, AgentRunSpec
from agentrun_api.status import AgentRunStatus

# Keywords a structural schema may carry that pydantic also emits; everything else is dropped.
_KEPT_KEYWORDS = frozenset(
    {
        "type",
        "description",
        "default",
        "enum",
        "format",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "required",
        "x-kubernetes-validations",
        "x-kubernetes-preserve-unknown-fields",
    }
)

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Where the run stands."},
    {
        "name": "Progress",
        "type": "string",
        "jsonPath": ".status.progress",
        "description": "Iterations done of maxIterations.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "description": "Time since creation."},
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name", "priority": 1, "description": "Model name."},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1, "description": "Last message."},
    {
        "name": "Waited",
        "type": "integer",
        "jsonPath": ".status.budget.waitedSeconds",
        "priority": 1,
        "description": "Seconds spent waiting for approvals (not counted against maxExecutionTime).",
    },
]


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = dict(defs[node["$ref"].rsplit("/", 1)[-1]])
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        # Optional[X] arrives as anyOf [X, null]: the field is simply optional in Kubernetes.
        choices = [c for c in node["anyOf"] if c.get("type") != "null"]
        if len(choices) != 1:
            raise ValueError(f"unions other than Optional cannot be expressed structurally: {node}")
        merged = {**node, **choices[0]}
        del merged["anyOf"]
        merged.pop("default", None) if node.get("default") is None else None
        return _structural(merged, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        merged = {**node, **node["allOf"][0]}
        del merged["allOf"]
        return _structural(merged, defs)
    if "const" in node:
        node = {**node, "enum": [node["const"]]}
    out: dict[str, Any] = {k: v for k, v in node.items() if k in _KEPT_KEYWORDS}
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if node.get("type") == "object" or "properties" in node:
        out["type"] = "object"
        if "properties" in node:
            out["properties"] = {name: _structural(sub, defs) for name, sub in node["properties"].items()}
        additional = node.get("additionalProperties")
        if isinstance(additional, dict):
            out["additionalProperties"] = _structural(additional, defs)
    if node.get("type") == "array":
        out["items"] = _structural(node["items"], defs)
    if out.get("default") is None:
        out.pop("default", None)
    if out.get("type") == "object" and out.get("default") == {}:
        # An empty default for a nested object lets the API server fill in its own defaults.
        out["default"] = {}
    return out


def _schema_of(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode=mode)
    schema = _structural(raw, raw.get("$defs", {}))
    _add_empty_defaults(model, schema)
    return schema


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _add_empty_defaults(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """Give fields with a ``default_factory`` the empty default the factory makes (pydantic leaves it out of
    JSON Schema): with ``default: {}`` the API server creates the object, then fills in its children's
    defaults, so a stored AgentRun shows every default, as the operator's model sees it."""
    for name, info in model.model_fields.items():
        prop = schema.get("properties", {}).get(info.alias or name)
        if prop is None:
            continue
        if info.default_factory is not None and "default" not in prop:
            made = info.default_factory()  # type: ignore[call-arg]
            prop["default"] = [] if isinstance(made, list) else {}
        nested = _nested_model(info.annotation)
        if nested is not None:
            _add_empty_defaults(nested, prop["items"] if prop.get("type") == "array" else prop)


def _add_immutability(spec_schema: dict[str, Any]) -> None:
    """Make every run-defining field immutable; only suspend and cancel may change after creation.

    A per-field transition rule names the field in the error; a spec-level rule catches an optional
    field being added or removed, which per-field rules cannot see.
    """
    optional: list[str] = []
    for name, prop in spec_schema["properties"].items():
        if name in MUTABLE_SPEC_FIELDS:
            continue
        prop.setdefault("x-kubernetes-validations", []).append(
            {"rule": "self == oldSelf", "message": f"{name} is immutable; create a new AgentRun to change it"}
        )
        if name not in spec_schema.get("required", []) and "default" not in prop:
            optional.append(name)
    if optional:
        rule = " && ".join(f"has(self.{n}) == has(oldSelf.{n})" for n in optional)
        spec_schema.setdefault("x-kubernetes-validations", []).append(
            {
                "rule": rule,
                "message": f"{', '.join(optional)} cannot be added or removed after creation",
            }
        )


@dataclass(frozen=True)
class CrdNames:
    """What tells one of the project's namespaced, status-bearing custom resources from another."""

    crd_name: str
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str  # of the whole object: the first thing `kubectl explain <kind>` prints


def _namespaced_crd(
    names: CrdNames,
    printer_columns: list[dict[str, Any]],
    spec_schema: dict[str, Any],
    status_schema: dict[str, Any] | None,
    *,
    scope: str = "Namespaced",
) -> dict[str, Any]:
    """A CRD of one served version; ``status_schema`` None: a resource nobody writes a status for."""
    properties: dict[str, Any] = {
        "apiVersion": {
            "type": "string",
            "description": f"APIVersion of this object: {constants.API_VERSION}.",
        },
        "kind": {"type": "string", "description": f"Kind of this object: {names.kind}."},
        "metadata": {"type": "object"},
        "spec": spec_schema,
    }
    if status_schema is not None:
        properties["status"] = status_schema
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": names.crd_name,
            "labels": {constants.LABEL_PART_OF: constants.PART_OF},
        },
        "spec": {
            "group": constants.GROUP,
            "scope": scope,
            "names": {
                "kind": names.kind,
                "listKind": f"{names.kind}List",
                "plural": names.plural,
                "singular": names.singular,
                "shortNames": list(names.short_names),
                "categories": list(constants.CATEGORIES),
            },
            "versions": [
                {
                    "name": constants.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}} if status_schema is not None else {},
                    "additionalPrinterColumns": printer_columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": names.description,
                            "required": ["spec"],
                            "properties": properties,
                        }
                    },
                }
            ],
        },
    }


def build_crd() -> dict[str, Any]:
    spec_schema = _schema_of(AgentRunSpec, "validation")
    spec_schema["description"] = AgentRunSpec.__doc__
    _add_immutability(spec_schema)
    status_schema = _schema_of(AgentRunStatus, "serialization")
    status_schema["description"] = AgentRunStatus.__doc__
    names = CrdNames(
        crd_name=constants.CRD_NAME,
        kind=constants.KIND,
        plural=constants.PLURAL,
        singular=constants.SINGULAR,
        short_names=constants.SHORT_NAMES,
        description="An AgentRun runs one AI agent task to completion as a Job: checkpointed after "
        "every step, resumed after pod loss, bounded by its time, iteration and token budgets.",
    )
    crd = _namespaced_crd(names, PRINTER_COLUMNS, spec_schema, status_schema)
    for version in crd["spec"]["versions"]:
        version["schema"]["openAPIV3Schema"]["x-kubernetes-validations"] = run_names.cel_rules()
    return crd


THROTTLEPOOL_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "In-Flight",
        "type": "integer",
        "jsonPath": ".status.inFlight",
        "description": "Model calls holding a permit.",
    },
    {"name": "Queued", "type": "integer", "jsonPath": ".status.queueDepth", "description": "Calls waiting."},
    {
        "name": "Rate",
        "type": "integer",
        "jsonPath": ".status.grantedLastMinute",
        "description": "Permits granted in the last minute.",
    },
    {
        "name": "Current-RPM",
        "type": "integer",
        "jsonPath": ".status.currentRequestsPerMinute",
        "description": "The rate granted at now, lowered on provider 429s.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "description": "Time since creation."},
    {
        "name": "Max-In-Flight",
        "type": "integer",
        "jsonPath": ".spec.maxRequestsInFlight",
        "priority": 1,
        "description": "Limit on calls in flight.",
    },
    {
        "name": "RPM",
        "type": "integer",
        "jsonPath": ".spec.requestsPerMinute",
        "priority": 1,
        "description": "Limit on calls started per minute.",
    },
]


def build_throttlepool_crd() -> dict[str, Any]:
    """The ThrottlePool CRD: namespaced, because runs sharing a pool share an API key Secret in their namespace."""
    spec_schema = _schema_of(throttlepool.ThrottlePoolSpec, "validation")
    spec_schema["description"] = throttlepool.ThrottlePoolSpec.__doc__
    status_schema = _schema_of(throttlepool.ThrottlePoolStatus, "serialization")
    status_schema["description"] = throttlepool.ThrottlePoolStatus.__doc__
    names = CrdNames(
        crd_name=throttlepool.CRD_NAME,
        kind=throttlepool.KIND,
        plural=throttlepool.PLURAL,
        singular=throttlepool.SINGULAR,
        short_names=tuple(throttlepool.SHORT_NAMES),
        description="A ThrottlePool is one provider budget (calls in flight, calls and tokens "
        "per minute) shared by every AgentRun in its namespace that names it in "
        "spec.throttle.pool; the operator grants each model call a permit from it.",
    )
    return _namespaced_crd(names, THROTTLEPOOL_PRINTER_COLUMNS, spec_schema, status_schema)


def build_clusterthrottlepool_crd() -> dict[str, Any]:
    """The ClusterThrottlePool CRD: a ThrottlePool's spec and status, cluster-scoped, for runs of many namespaces."""
    spec_schema = _schema_of(clusterthrottlepool.ClusterThrottlePoolSpec, "validation")
    spec_schema["description"] = clusterthrottlepool.ClusterThrottlePoolSpec.__doc__
    status_schema = _schema_of(clusterthrottlepool.ClusterThrottlePoolStatus, "serialization")
    status_schema["description"] = clusterthrottlepool.ClusterThrottlePoolStatus.__doc__
    names = CrdNames(
        crd_name=clusterthrottlepool.CRD_NAME,
        kind=clusterthrottlepool.KIND,
        plural=clusterthrottlepool.PLURAL,
        singular=clusterthrottlepool.SINGULAR,
        short_names=tuple(clusterthrottlepool.SHORT_NAMES),
        description="A ClusterThrottlePool is one provider budget shared by AgentRuns of every namespace allowed "
        "to use it (RBAC verb 'use' on clusterthrottlepools) that name it in spec.throttle.clusterPool.",
    )
    return _namespaced_crd(names, THROTTLEPOOL_PRINTER_COLUMNS, spec_schema, status_schema, scope="Cluster")


TEMPLATE_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.run.model.name", "description": "Model name."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "description": "Time since creation."},
    {
        "name": "Overrides",
        "type": "string",
        "jsonPath": ".spec.allowedOverrides",
        "priority": 1,
        "description": "Fields a request may set itself.",
    },
]


def build_agentruntemplate_crd() -> dict[str, Any]:
    """The AgentRunTemplate CRD: namespaced (a template names Secrets of its namespace), spec only."""
    spec_schema = _schema_of(template.AgentRunTemplateSpec, "validation")
    spec_schema["description"] = template.AgentRunTemplateSpec.__doc__
    names = CrdNames(
        crd_name=template.CRD_NAME,
        kind=template.KIND,
        plural=template.PLURAL,
        singular=template.SINGULAR,
        short_names=tuple(template.SHORT_NAMES),
        description="An AgentRunTemplate fixes the model, tools and limits of runs submitted over HTTP (the "
        "stream gateway's runs API): a request names the template, gives the input and may set only the fields "
        "listed in allowedOverrides.",
    )
    return _namespaced_crd(names, TEMPLATE_PRINTER_COLUMNS, spec_schema, None)


APPROVAL_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Run", "type": "string", "jsonPath": ".spec.run", "description": "The AgentRun."},
    {"name": "Decision", "type": "string", "jsonPath": ".spec.decision", "description": "Approve or Deny."},
    {"name": "Decided-By", "type": "string", "jsonPath": ".spec.decidedBy", "description": "Who decided."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "description": "Time since creation."},
    {"name": "Call", "type": "string", "jsonPath": ".spec.call", "priority": 1, "description": "The call's key."},
    {
        "name": "Recorded-By",
        "type": "string",
        "jsonPath": ".spec.recordedBy",
        "priority": 1,
        "description": "The service that recorded the decision for its caller (the runs API); empty: the decider.",
    },
]


def build_approval_crd() -> dict[str, Any]:
    """The AgentRunApproval CRD: a decision, immutable once made; who made it is checked by admission_policy."""
    spec_schema = _schema_of(approval.AgentRunApprovalSpec, "validation")
    spec_schema["description"] = approval.AgentRunApprovalSpec.__doc__
    spec_schema["x-kubernetes-validations"] = [
        {"rule": "self == oldSelf", "message": "an approval cannot be changed once made"}
    ]
    names = CrdNames(
        crd_name=approval.CRD_NAME,
        kind=approval.KIND,
        plural=approval.PLURAL,
        singular=approval.SINGULAR,
        short_names=tuple(approval.SHORT_NAMES),
        description="An AgentRunApproval approves or denies one tool call an AgentRun waits on "
        "(`kubectl agentrun approve|deny`, or the runs API). Creating one is the RBAC right to decide; "
        "spec.decidedBy must be the creating user, or spec.recordedBy the creating user holding the verb record "
        "(a ValidatingAdmissionPolicy checks it).",
    )
    return _namespaced_crd(names, APPROVAL_PRINTER_COLUMNS, spec_schema, None)


MCPSERVER_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "URL", "type": "string", "jsonPath": ".spec.url", "description": "The server's endpoint."},
    {"name": "Ready", "type": "boolean", "jsonPath": ".status.ready", "description": "Tools listed."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "description": "Time since creation."},
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1, "description": "Last listing."},
]


def build_mcpserver_crd() -> dict[str, Any]:
    """The MCPServer CRD: namespaced, because its header Secrets and the runs using it live in a namespace."""
    spec_schema = _schema_of(mcpserver.MCPServerSpec, "validation")
    spec_schema["description"] = mcpserver.MCPServerSpec.__doc__
    status_schema = _schema_of(mcpserver.MCPServerStatus, "serialization")
    status_schema["description"] = mcpserver.MCPServerStatus.__doc__
    names = CrdNames(
        crd_name=mcpserver.CRD_NAME,
        kind=mcpserver.KIND,
        plural=mcpserver.PLURAL,
        singular=mcpserver.SINGULAR,
        short_names=tuple(mcpserver.SHORT_NAMES),
        description="An MCPServer is one MCP server (streamable HTTP) that AgentRuns in its namespace may use, "
        "naming it and the tools they may call in spec.tools.mcp; the operator lists its tools in status.tools.",
    )
    return _namespaced_crd(names, MCPSERVER_PRINTER_COLUMNS, spec_schema, status_schema)


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated sub-schemas out in full: anchors and aliases confuse readers of a CRD."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_HEADER = "# Generated from api/agentrun_api by `make crds`. Do not edit by hand.\n"


def _render(crd: dict[str, Any]) -> str:
    return _HEADER + yaml.dump(crd, Dumper=_NoAliasDumper, sort_keys=False, width=120)


def render_crd() -> str:
    return _render(build_crd())


def render_throttlepool_crd() -> str:
    return _render(build_throttlepool_crd())


def write_all(directory: Path) -> list[Path]:
    """Write every CRD into directory, one file each, named after the CRD."""
    written = []
    every_crd = (
        build_crd(),
        build_throttlepool_crd(),
        build_clusterthrottlepool_crd(),
        build_agentruntemplate_crd(),
        build_approval_crd(),
        build_mcpserver_crd(),
    )
    for crd in every_crd:
        path = directory / f"{crd['metadata']['name']}.yaml"
        path.write_text(_render(crd))
        written.append(path)
    return written


if __name__ == "__main__":
    # `python -m agentrun_api.crd` prints the AgentRun CRD; `--all DIR` writes every CRD into DIR.
    if sys.argv[1:2] == ["--all"] and len(sys.argv) == 3:
        write_all(Path(sys.argv[2]))
    elif len(sys.argv) == 1:
        sys.stdout.write(render_crd())
    else:
        sys.exit("usage: python -m agentrun_api.crd [--all DIR]")
