"""Every AgentRun a newcomer copies fits its own time budget: the operator's budget check has no warning for it.

The manifests are the ones in examples/, in the README and docs, and in the chart's install notes; each is
parsed by the models (whose defaults are the CRD's), then checked with the operator's own budget function. That
the real API server accepts each of them is tests/integration/test_crd_admission.py's.
"""

import re
from typing import Any

import pytest
import yaml

from agentrun_operator.budget import compute_budget
from agentrun_operator.parsing import parse_spec
from tests.unit.example_manifests import EXAMPLES_DIR, agentrun_examples, load

pytestmark = pytest.mark.unit

REPO_ROOT = EXAMPLES_DIR.parent
MARKDOWN_YAML = re.compile(r"^```ya?ml\n(.*?)^```", re.MULTILINE | re.DOTALL)
NOTES_HEREDOC = re.compile(r"<<'YAML'\n(.*?)^YAML$", re.MULTILINE | re.DOTALL)


def agentruns_in(text: str, block: re.Pattern[str]) -> list[dict[str, Any]]:
    return [
        document
        for match in block.finditer(text)
        for document in yaml.safe_load_all(match.group(1))
        if isinstance(document, dict) and document.get("kind") == "AgentRun"
    ]


def shown_agentruns() -> list[tuple[str, dict[str, Any]]]:
    """(where it is shown, the manifest) for every AgentRun the repository offers to be copied."""
    shown = [(str(path.relative_to(REPO_ROOT)), load(path)) for path in agentrun_examples()]
    for page in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        shown += [
            (f"{page.relative_to(REPO_ROOT)}: {run['metadata']['name']}", run)
            for run in agentruns_in(page.read_text(), MARKDOWN_YAML)
        ]
    notes = REPO_ROOT / "helm" / "agentrun-operator" / "templates" / "NOTES.txt"
    shown += [(str(notes.relative_to(REPO_ROOT)), run) for run in agentruns_in(notes.read_text(), NOTES_HEREDOC)]
    return shown


def test_the_readme_and_the_chart_notes_are_among_the_manifests_checked() -> None:
    where = [place for place, _ in shown_agentruns()]
    assert "README.md: q3-research" in where
    assert "helm/agentrun-operator/templates/NOTES.txt" in where
    assert len([place for place in where if place.startswith("examples/")]) == len(agentrun_examples())


@pytest.mark.parametrize(
    ("where", "manifest"), shown_agentruns(), ids=lambda value: value if isinstance(value, str) else ""
)
def test_every_shown_agentrun_fits_its_time_budget(where: str, manifest: dict[str, Any]) -> None:
    spec = parse_spec(manifest)
    budget = compute_budget(spec)

    assert budget.fits, f"{where}: {budget.explain()}"
