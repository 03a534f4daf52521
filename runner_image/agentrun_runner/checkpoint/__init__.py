"""Checkpoint stores: where the run's state survives the pod."""

from agentrun_runner.checkpoint.configmap import ConfigMapStore
from agentrun_runner.checkpoint.pvc import PvcStore
from agentrun_runner.checkpoint.store import CheckpointError, CheckpointStore, Loaded

__all__ = [
    "CheckpointError",
    "CheckpointStore",
    "ConfigMapStore",
    "Loaded",
    "PvcStore",
]
