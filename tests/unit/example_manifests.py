"""The manifests under examples/: the runs a newcomer copies, and the bad ones with the error each must get."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
BAD_DIR = EXAMPLES_DIR / "bad"


@dataclass(frozen=True)
class BadExample:
    """A manifest the API must refuse, with what the refusal must say (from its header comments)."""

    path: Path
    manifest: dict[str, Any]
    expect: str
    """A part of the admission error text that names the field."""
    field: str
    """The field path the admission error is reported at."""
    model_error: str
    """A part of the pydantic error (``loc: message``) for the same spec."""

    @property
    def id(self) -> str:
        return self.path.stem


def load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path} is not one YAML mapping"
    return loaded


def agentrun_examples() -> list[Path]:
    return sorted(p for p in EXAMPLES_DIR.glob("*.yaml") if load(p)["kind"] == "AgentRun")


def _header(path: Path, key: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(f"# {key}: "):
            return line.removeprefix(f"# {key}: ")
    raise AssertionError(f"{path} has no '# {key}:' header")


def bad_examples() -> list[BadExample]:
    return [
        BadExample(
            path=path,
            manifest=load(path),
            expect=_header(path, "expect"),
            field=_header(path, "field"),
            model_error=_header(path, "model error"),
        )
        for path in sorted(BAD_DIR.glob("*.yaml"))
    ]
