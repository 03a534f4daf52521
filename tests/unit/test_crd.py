"""The committed CRD: generated from the models, described for kubectl explain, with useful columns."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from agentrun_api import constants
from agentrun_api.crd import build_crd, build_throttlepool_crd, render_crd

pytestmark = pytest.mark.unit

COMMITTED_CRD = Path(__file__).resolve().parents[2] / "crds" / "agentruns.agentrun.dev.yaml"


def openapi_schema() -> dict[str, Any]:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert isinstance(schema, dict)
    return schema


def properties(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property below a schema node, through objects, list items and map values."""
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}.{name}", sub
        yield from properties(sub, f"{path}.{name}")
    for key, marker in (("items", "[]"), ("additionalProperties", "{}")):
        if isinstance(schema.get(key), dict):
            yield from properties(schema[key], path + marker)


def test_committed_crd_is_what_make_crds_generates() -> None:
    assert COMMITTED_CRD.read_text() == render_crd(), "the models changed: run `make crds` and commit the result"


def test_committed_crd_parses_to_the_built_crd() -> None:
    assert yaml.safe_load(COMMITTED_CRD.read_text()) == build_crd()


@pytest.mark.parametrize("part", ["spec", "status"])
def test_every_property_has_a_description_for_kubectl_explain(part: str) -> None:
    schema = openapi_schema()["properties"][part]
    found = list(properties(schema, part))

    assert len(found) > 20
    undescribed = [path for path, sub in found if not str(sub.get("description", "")).strip()]
    assert undescribed == []
    assert str(schema.get("description", "")).strip()


def test_every_schema_node_has_a_type_as_a_structural_schema_requires() -> None:
    untyped = [path for path, sub in properties(openapi_schema(), "") if "type" not in sub]
    assert untyped == []


def test_printer_columns_show_phase_progress_and_age_with_model_message_and_approval_wait_on_wide() -> None:
    version = build_crd()["spec"]["versions"][0]
    columns = version["additionalPrinterColumns"]

    # NAME is printed by kubectl from metadata.name; declaring it again would print it twice.
    assert all(c["jsonPath"] != ".metadata.name" and c["name"].upper() != "NAME" for c in columns)
    default = [(c["name"].upper(), c["jsonPath"]) for c in columns if c.get("priority", 0) == 0]
    wide = [(c["name"].upper(), c["jsonPath"]) for c in columns if c.get("priority", 0) == 1]
    assert default == [
        ("PHASE", ".status.phase"),
        ("PROGRESS", ".status.progress"),
        ("AGE", ".metadata.creationTimestamp"),
    ]
    assert wide == [
        ("MODEL", ".spec.model.name"),
        ("MESSAGE", ".status.message"),
        ("WAITED", ".status.budget.waitedSeconds"),
    ]
    assert next(c for c in columns if c["name"] == "Age")["type"] == "date"
    assert all(c.get("description") for c in columns)


def test_no_category_shadows_a_resource_name_kubectl_would_resolve() -> None:
    # kubectl expands categories first: a category named like a kind turns `kubectl get agentrun x` into a
    # get of several kinds, which kubectl refuses.
    names: set[str] = set()
    for crd in (build_crd(), build_throttlepool_crd()):
        crd_names = crd["spec"]["names"]
        names |= {crd_names["plural"], crd_names["singular"], crd_names["kind"].lower(), *crd_names["shortNames"]}
    categories = {
        category for crd in (build_crd(), build_throttlepool_crd()) for category in crd["spec"]["names"]["categories"]
    }
    assert categories
    assert not categories & names


def test_the_crd_serves_one_storage_version_with_the_status_subresource() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == f"{constants.PLURAL}.{constants.GROUP}"
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == (constants.VERSION, True, True)
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["scope"] == "Namespaced"


def test_the_crd_is_a_valid_custom_resource_definition_for_kubernetes() -> None:
    # kubernetes-validate checks the manifest against the API's own OpenAPI schema for the CRD kind.
    validated_as = kubernetes_validate.validate(build_crd(), kubernetes_validate.latest_version(), strict=True)
    assert kubernetes_validate.latest_version().startswith(validated_as)
