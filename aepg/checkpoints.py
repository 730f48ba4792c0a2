"""Task and epoch checkpoints under STORAGE_PATH/RUN_ID/checkpoints, on any pyarrow filesystem.

A checkpoint file is a sha256 hex digest line followed by a ``torch.save`` payload. It is
written under a temporary name and renamed into place, and its digest is checked on load:
a truncated or corrupt file is skipped with a warning and the previous checkpoint is used; when
none is readable, ``CheckpointsUnreadable`` names each.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import asdict

import pyarrow.fs as pafs
import torch

from aepg.trainer import Snapshot, TrainState

log = logging.getLogger("aepg")

PREFIX = "ckpt-"
SUFFIX = ".pt"


class CheckpointsUnreadable(RuntimeError):
    """A run has checkpoints and none of them can be read."""


class CheckpointStore:
    def __init__(self, storage_path: str, run_id: str, num_to_keep: int = 3):
        self.fs, base = pafs.FileSystem.from_uri(storage_path)
        self.folder = f"{base.rstrip('/')}/{run_id}/checkpoints"
        self.num_to_keep = num_to_keep
        self.uri = f"{storage_path.rstrip('/')}/{run_id}/checkpoints"

    def _names(self) -> list[str]:
        selector = pafs.FileSelector(self.folder, allow_not_found=True)
        names = [info.base_name for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File]
        return sorted(n for n in names if n.startswith(PREFIX) and n.endswith(SUFFIX))

    def save(self, snapshot: Snapshot, config: dict) -> str:
        """Write atomically; name by (tasks done, epochs done) so names sort by progress."""
        state = snapshot.state
        buffer = io.BytesIO()
        payload = {"state": asdict(state), "model": snapshot.model, "optimizer": snapshot.optimizer, "config": config}
        torch.save(payload, buffer)
        data = buffer.getvalue()
        name = f"{PREFIX}{state.task:04d}-{state.epoch:04d}{SUFFIX}"
        path, partial = f"{self.folder}/{name}", f"{self.folder}/.{name}.partial"
        self.fs.create_dir(self.folder, recursive=True)
        with self.fs.open_output_stream(partial) as out:
            out.write(hashlib.sha256(data).hexdigest().encode() + b"\n")
            out.write(data)
        self.fs.move(partial, path)
        for old in self._names()[: -self.num_to_keep]:
            self.fs.delete_file(f"{self.folder}/{old}")
        log.debug("checkpoint %s written", path)
        return path

    def _read(self, name: str) -> dict:
        with self.fs.open_input_stream(f"{self.folder}/{name}") as stream:
            raw = stream.read()
        digest, _, data = raw.partition(b"\n")
        if hashlib.sha256(data).hexdigest().encode() != digest:
            raise ValueError("digest mismatch (truncated or corrupt file)")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def load_latest(self) -> tuple[Snapshot, dict] | None:
        """The newest readable checkpoint and its config, or None when there is none; newer unreadable
        ones are named in a warning, and ``CheckpointsUnreadable`` names them all when none is readable."""
        unreadable = []
        for name in reversed(self._names()):
            try:
                payload = self._read(name)
            except Exception as error:
                unreadable.append(f"{name} ({error})")
                continue
            if unreadable:
                log.warning("unreadable checkpoints in %s: %s; resuming from %s", self.uri, "; ".join(unreadable), name)
            state = TrainState(**payload["state"])
            return Snapshot(state, payload["model"], payload["optimizer"]), payload["config"]
        if unreadable:
            raise CheckpointsUnreadable(f"no checkpoint in {self.uri} can be read: {'; '.join(unreadable)}")
        return None
