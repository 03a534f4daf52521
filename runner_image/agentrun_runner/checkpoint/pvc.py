"""Checkpoint store on a mounted volume: one append-only log file, fsynced after every record.

Every record carries the run's uid; a record of another run (a claim kept from a deleted run of the
same name) ends the log there and is cut off, as a corrupt one is.
"""

import asyncio
import os
from pathlib import Path
from typing import Any

from agentrun_common.eventlog.records import CorruptRecordError, bind_record, check_owner, decode_next, encode_record
from agentrun_runner.checkpoint.store import CheckpointError, Loaded

LOG_FILE = "checkpoint.log"
RESULT_FILE = "result.txt"


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PvcStore:
    def __init__(self, directory: Path, claim_name: str, *, run_uid: str) -> None:
        self._directory = directory
        self._run_uid = run_uid
        self._claim_name = claim_name
        self._log = directory / LOG_FILE
        self._total = 0

    @property
    def total_bytes(self) -> int:
        return self._total

    async def load(self) -> Loaded:
        return await asyncio.to_thread(self._load)

    def _load(self) -> Loaded:
        try:
            data = self._log.read_bytes()
        except FileNotFoundError:
            return Loaded(records=[])
        records: list[dict[str, Any]] = []
        offset = 0
        problem = None
        while offset < len(data):
            try:
                record, end = decode_next(data, offset)
                check_owner(record, self._run_uid)
            except CorruptRecordError as error:
                problem = f"checkpoint record {len(records)} at byte {offset} of {LOG_FILE} is unusable ({error})"
                break
            records.append(record)
            offset = end
        if problem is not None:
            # Cut the bad tail so the next append follows the last good record.
            with open(self._log, "r+b") as log:
                log.truncate(offset)
                os.fsync(log.fileno())
        self._total = offset
        return Loaded(records=records, problem=problem, total_bytes=offset)

    async def append(self, record: dict[str, Any]) -> int:
        frame = encode_record(bind_record(record, self._run_uid))
        try:
            await asyncio.to_thread(self._append, frame)
        except OSError as error:
            raise CheckpointError(f"cannot write the checkpoint to {self._claim_name}: {error}") from error
        self._total += len(frame)
        return len(frame)

    def _append(self, frame: bytes) -> None:
        created = not self._log.exists()
        self._directory.mkdir(parents=True, exist_ok=True)
        with open(self._log, "ab") as log:
            log.write(frame)
            log.flush()
            os.fsync(log.fileno())
        if created:
            # A new file's directory entry is durable only once the directory is synced.
            _fsync_directory(self._directory)

    async def save_result(self, text: str) -> str:
        await asyncio.to_thread(self._save_result, text.encode("utf-8"))
        return f"pvc/{self._claim_name}/{RESULT_FILE}"

    def _save_result(self, data: bytes) -> None:
        target = self._directory / RESULT_FILE
        temporary = self._directory / (RESULT_FILE + ".tmp")
        self._directory.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
        _fsync_directory(self._directory)

    async def close(self) -> None:
        return None
