"""An on-disk cache of sweep results: one file per entry, written atomically, safe to interrupt."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def default_dir() -> Path:
    """``$KCP_CACHE_DIR``, else ``~/.cache/kcp-rank-explorer``."""
    env = os.environ.get("KCP_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "kcp-rank-explorer"


# Part of every key: raised whenever a release changes what a fit returns for the same inputs (v2: weighted block
# ALS output fits and the Levenberg-Marquardt kernel finish), so an upgrade never serves the old numbers.
CACHE_VERSION = 2


def cache_key(**parts: Any) -> str:
    """A stable key for the parts (weights hash, layer, method, ranks, options, ...) and :data:`CACHE_VERSION`."""
    blob = json.dumps({**parts, "cache_version": CACHE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class ResultCache:
    """Entries are dicts of tensors, numbers and strings, readable with ``torch.load(weights_only=True)``.

    A write goes to a temporary file in the same folder and is renamed into place, so a reader (or a
    rerun after a crash) sees either the whole entry or none; an unreadable entry counts as a miss.
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_dir()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged entry is recomputed and overwritten
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(value, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.pt")) if self.root.is_dir() else 0
