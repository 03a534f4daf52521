"""Checkpoint stores: where the run's state survives the pod."""

from agentrun_runner.checkpoint.configmap import ConfigMapStore
from agentrun_runner.checkpoint.pvc import PvcStore
from agentrun_runner.checkpoint.records import CorruptRecordError, Loaded, decode_record, encode_record
from agentrun_runner.checkpoint.store import CheckpointError, CheckpointStore

__all__ = [
    "CheckpointError",
    "CheckpointStore",
    "ConfigMapStore",
    "CorruptRecordError",
    "Loaded",
    "PvcStore",
    "decode_record",
    "encode_record",
]
