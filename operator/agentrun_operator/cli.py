"""`agentrun render -f run.yaml`: print every object the operator would create for a run.

No cluster is needed: the manifest is validated by the pydantic models the CRD is generated from (bounds,
enums, durations, the cross-field rules the CRD's CEL rules also express), then the objects come from the
same builders the operator uses. With ``--server-dry-run`` the manifest is first sent to the cluster of the
kubeconfig as a dry-run create (``dryRun=All``, ``fieldValidation=Strict``), so the cluster's installed CRD
(its OpenAPI schema, defaults and CEL rules) judges it and nothing is stored. Values only the API server or
the operator can give are shown as placeholders: the run's uid (unless the manifest has one) and the
stream token (generated at creation, never printed).
"""

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from agentrun_api import constants
from agentrun_common.settings import SettingsError
from agentrun_operator import policy
from agentrun_operator.budget import compute_budget
from agentrun_operator.children import RunOwner, build_children
from agentrun_operator.parsing import InvalidSpecError, parse_spec
from agentrun_operator.settings import OperatorSettings

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"
PLACEHOLDER_TOKEN = "generated-by-the-operator-at-creation"  # noqa: S105 - a placeholder, not a secret

# The top-level fields of an AgentRun; anything else is refused, as the API server's strict decoding does.
_OBJECT_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})


class RenderError(ValueError):
    """Input the command cannot render; the message says what and where."""


def _load_runs(stream: TextIO, source: str) -> list[dict[str, Any]]:
    try:
        documents = [doc for doc in yaml.safe_load_all(stream) if doc is not None]
    except yaml.YAMLError as error:
        raise RenderError(f"{source}: not valid YAML: {error}") from None
    runs = []
    for index, doc in enumerate(documents):
        if not isinstance(doc, dict):
            raise RenderError(f"{source}: document {index + 1} is not a Kubernetes object")
        if doc.get("apiVersion") != constants.API_VERSION or doc.get("kind") != constants.KIND:
            raise RenderError(
                f"{source}: document {index + 1}: apiVersion/kind must be {constants.API_VERSION}/{constants.KIND}, "
                f"not {doc.get('apiVersion')}/{doc.get('kind')}"
            )
        runs.append(doc)
    if not runs:
        raise RenderError(f"{source}: no AgentRun found")
    return runs


@dataclass(frozen=True)
class DryRunTarget:
    """Where ``--server-dry-run`` sends the manifests: a kubeconfig (the flag, KUBECONFIG or ~/.kube/config) and
    a context in it (the current one unless named)."""

    kubeconfig: str | None = None
    context: str | None = None

    def api(self) -> client.ApiClient:
        try:
            api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=self.kubeconfig, context=self.context
            )
        except config.ConfigException as error:
            raise RenderError(f"--server-dry-run: cannot load the kubeconfig: {error}") from None
        except OSError as error:
            raise RenderError(f"--server-dry-run: cannot read the kubeconfig: {error}") from None
        return api


def server_dry_run(api: client.ApiClient, run: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The run as the cluster would store it (its CRD's defaults applied), from a dry-run create that stores
    nothing; a refusal is a RenderError with the API server's own message, which names every field."""
    try:
        answer = client.CustomObjectsApi(api).create_namespaced_custom_object(
            constants.GROUP,
            constants.VERSION,
            namespace,
            constants.PLURAL,
            run,
            dry_run="All",
            field_validation="Strict",
        )
    except ApiException as error:
        if error.status == 409:
            name = run["metadata"]["name"]
            raise RenderError(
                f"AgentRun {name} already exists in namespace {namespace}, so a dry-run create cannot judge it: "
                "its spec cannot change after creation (only suspend and cancel); give the manifest a new name"
            ) from None
        raise RenderError(f"the API server refused the run (dry run): {_status_message(error)}") from None
    except urllib3.exceptions.HTTPError as error:
        host = api.configuration.host
        raise RenderError(f"--server-dry-run: cannot reach the API server at {host}: {error}") from None
    if not isinstance(answer, dict):
        raise RenderError(f"the API server answered the dry run with {type(answer).__name__}, not an object")
    return answer


def _status_message(error: ApiException) -> str:
    try:
        status = json.loads(error.body or "")
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("message"):
        return f"{status['message']} ({error.status} {status.get('reason') or error.reason})"
    return f"{error.status} {error.reason}"


def render_run(
    run: dict[str, Any], settings: OperatorSettings, *, namespace: str, api: client.ApiClient | None = None
) -> list[dict[str, Any]]:
    """The run's objects. With ``api``, the cluster judges the manifest first (a server-side dry run) and the
    objects are built from the spec as the cluster would store it."""
    meta = run.get("metadata") or {}
    if not isinstance(meta, dict) or not meta.get("name"):
        raise RenderError("metadata.name: required; name the run")
    unknown = sorted(set(run) - _OBJECT_FIELDS)
    if unknown:
        raise RenderError(
            f"AgentRun {meta['name']}: unknown field {', '.join(unknown)}; an AgentRun has only "
            "apiVersion, kind, metadata and spec"
        )
    namespace = meta.get("namespace") or namespace
    if api is not None:
        run = server_dry_run(api, {**run, "metadata": {**meta, "namespace": namespace}}, namespace)
    try:
        spec = parse_spec(run)
        policy.enforce(spec, settings.policy)  # the operator would refuse it: no objects to show
    except InvalidSpecError as error:
        raise RenderError(f"AgentRun {meta['name']}: {error}") from None
    except policy.PolicyViolationError as error:
        raise RenderError(f"AgentRun {meta['name']}: {error.reason}: {error}") from None
    owner = RunOwner(namespace=namespace, name=meta["name"], uid=meta.get("uid") or PLACEHOLDER_UID)
    now = datetime.now(UTC)  # rendered as if the run were accepted now: its clock starts at acceptance
    deadline = compute_budget(spec).deadline_from(now)
    return build_children(
        owner, spec, settings, stream_token=PLACEHOLDER_TOKEN, permit_key=PLACEHOLDER_TOKEN, deadline=deadline, now=now
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentrun", description="Tools for AgentRun resources.")
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser(
        "render",
        help="print the objects the operator would create for a run",
        description="Print every object the operator would create for each AgentRun in a manifest. The manifest "
        "is validated by the AgentRun models (no cluster needed); --server-dry-run also has a cluster's API "
        "server validate it with the installed CRD's schema, defaults and CEL rules, storing nothing.",
    )
    render.add_argument("-f", "--filename", required=True, help="AgentRun manifest (YAML); - reads standard input")
    render.add_argument("-n", "--namespace", default="default", help="namespace when the manifest names none")
    render.add_argument(
        "--server-dry-run",
        action="store_true",
        help="validate each run on the cluster first: a dry-run create (dryRun=All, fieldValidation=Strict) that "
        "runs the installed CRD's schema and CEL rules and stores nothing; needs create on agentruns",
    )
    render.add_argument(
        "--kubeconfig", help="kubeconfig for --server-dry-run (default: KUBECONFIG, then ~/.kube/config)"
    )
    render.add_argument("--context", help="kubeconfig context for --server-dry-run (default: the current one)")
    args = parser.parse_args(argv)
    if (args.kubeconfig or args.context) and not args.server_dry_run:
        parser.error("--kubeconfig and --context apply only with --server-dry-run")
    try:
        settings = OperatorSettings.from_env()
        if args.filename == "-":
            runs = _load_runs(sys.stdin, "<stdin>")
        else:
            try:
                with open(args.filename, encoding="utf-8") as handle:
                    runs = _load_runs(handle, args.filename)
            except OSError as error:
                raise RenderError(f"{args.filename}: {error.strerror}") from None
        api = DryRunTarget(args.kubeconfig, args.context).api() if args.server_dry_run else None
        try:
            objects = [obj for run in runs for obj in render_run(run, settings, namespace=args.namespace, api=api)]
        finally:
            if api is not None:
                api.close()  # type: ignore[no-untyped-call]
    except (RenderError, SettingsError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 1
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, width=120))
    return 0


if __name__ == "__main__":
    sys.exit(main())
