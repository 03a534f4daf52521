"""Render the Helm chart with the real Helm engine, offline.

The engine is Helm's own Go code (Helm v4), called through `helm-python-sdk`'s bundled libhelm_c, so
templates, `values.schema.json` and `helm lint` behave exactly as `helm install` would.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "agentrun-operator"
CI_VALUES_DIR = CHART_DIR / "ci"
RELEASE = "agentrun-operator"
NAMESPACE = "agentrun-system"

# The oldest and the newest Kubernetes minors the chart is validated against. kubernetes-validate 1.37.0 ships
# schemas for 1.25 to 1.37; the CRD's CEL rules and the Job pod failure policy are GA from 1.31 (Chart.yaml's
# kubeVersion says the same).
OLDEST_KUBERNETES = "1.31.0"
NEWEST_KUBERNETES = "1.37.0"


def ci_scenarios() -> dict[str, dict[str, Any]]:
    """The values files under ci/, by scenario name (default, namespaced, monitoring, ...)."""
    scenarios = {}
    for path in sorted(CI_VALUES_DIR.glob("*-values.yaml")):
        scenarios[path.name.removesuffix("-values.yaml")] = yaml.safe_load(path.read_text()) or {}
    return scenarios


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would produce them (raises HelmError on failure)."""
    with helm_python.Chart.load(CHART_DIR) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def chart_crd_documents() -> list[dict[str, Any]]:
    """The objects in the chart's crds/ directory (Helm applies them before the templates)."""
    with helm_python.Chart.load(CHART_DIR) as chart:
        return [doc for crd in chart.crds for doc in yaml.safe_load_all(crd["data"]) if doc]


def render_objects(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every Kubernetes object the templates render (NOTES.txt excluded)."""
    return list(_objects(render(values)))


def _objects(rendered: dict[str, str]) -> Iterator[dict[str, Any]]:
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                yield doc


def notes(values: dict[str, Any] | None = None) -> str:
    return render(values)[f"{CHART_DIR.name}/templates/NOTES.txt"]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)
