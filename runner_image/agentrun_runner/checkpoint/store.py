"""The interface of a checkpoint store. Two implementations: ConfigMap segments and PVC files."""

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Loaded:
    """What a store found: the good records in order and, if it stopped early, why."""

    records: list[dict[str, Any]]
    problem: str | None = None  # set when a corrupt or partial record was found and dropped
    total_bytes: int = 0


class CheckpointError(Exception):
    """State could not be written or read; the message says what to change."""


class CheckpointStore(Protocol):
    async def load(self) -> Loaded:
        """The good records, oldest first. A corrupt or partial tail is dropped from the store (so
        later appends follow the last good record) and described in ``Loaded.problem``."""
        ...

    async def append(self, record: dict[str, Any]) -> int:
        """Append one record durably; returns the bytes written."""
        ...

    async def save_result(self, text: str) -> str:
        """Store the full final result; returns its reference ("configmap/<name>#result", "pvc/...")."""
        ...

    @property
    def total_bytes(self) -> int:
        """Bytes of checkpoint state in the store."""
        ...

    async def close(self) -> None: ...
