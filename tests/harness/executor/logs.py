"""Container logs through the API: the emulated API server's ``pods/log`` reads the executor's files."""

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.harness.executor.executor import LocalJobExecutor


class ExecutorPodLogs(Mapping[tuple[str, str], str]):
    """(namespace, pod) -> the pod's first container's output so far, for the emulator's ``pod_logs`` hook
    (``apiserver.handler.pod_logs = ExecutorPodLogs(executor)``), so ``kubectl logs`` shows it."""

    def __init__(self, executor: "LocalJobExecutor") -> None:
        self._executor = executor

    def __getitem__(self, key: tuple[str, str]) -> str:
        return self._executor.read_log(*key)  # LookupError (a KeyError's sibling) for unknown pods

    def get(self, key: tuple[str, str], default: str = "") -> str:  # type: ignore[override]
        try:
            return self[key]
        except LookupError:
            return default

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._executor.pod_keys())

    def __len__(self) -> int:
        return len(self._executor.pod_keys())
