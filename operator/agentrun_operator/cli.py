"""`agentrun render -f run.yaml`: print every object the operator would create for a run.

No cluster is needed: the objects come from the same builders the operator uses. Values only the
API server or the operator can give are shown as placeholders: the run's uid (unless the manifest
has one) and the stream token (generated at creation, never printed).
"""

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import yaml

from agentrun_api import constants
from agentrun_api.admission import AdmissionError, load_agentrun_admission
from agentrun_operator.children import RunOwner, build_children
from agentrun_operator.parsing import InvalidSpecError, parse_spec
from agentrun_operator.settings import OperatorSettings, SettingsError

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"
PLACEHOLDER_TOKEN = "generated-by-the-operator-at-creation"  # noqa: S105 - a placeholder, not a secret


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


def render_run(run: dict[str, Any], settings: OperatorSettings, *, namespace: str) -> list[dict[str, Any]]:
    meta = run.get("metadata") or {}
    if not meta.get("name"):
        raise RenderError("metadata.name: required")
    try:
        # What the API server would do first (schema, defaults, CEL rules), with its wording; then
        # the operator's own parsing of what was admitted.
        admitted = load_agentrun_admission().admit(run)
        spec = parse_spec(admitted)
    except AdmissionError as error:
        raise RenderError(str(error)) from None
    except InvalidSpecError as error:
        raise RenderError(f"AgentRun {meta['name']}: {error}") from None
    owner = RunOwner(
        namespace=meta.get("namespace") or namespace, name=meta["name"], uid=meta.get("uid") or PLACEHOLDER_UID
    )
    return build_children(owner, spec, settings, stream_token=PLACEHOLDER_TOKEN)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentrun", description="Tools for AgentRun resources.")
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="print the objects the operator would create for a run")
    render.add_argument("-f", "--filename", required=True, help="AgentRun manifest (YAML); - reads standard input")
    render.add_argument("-n", "--namespace", default="default", help="namespace when the manifest names none")
    args = parser.parse_args(argv)
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
        objects = [obj for run in runs for obj in render_run(run, settings, namespace=args.namespace)]
    except (RenderError, SettingsError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 1
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, width=120))
    return 0


if __name__ == "__main__":
    sys.exit(main())
