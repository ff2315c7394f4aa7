"""Embeddings and pairwise values cached by image content, in one SQLite file (default DIR/metrics.sqlite).

Keys are the model's name and the SHA-256 of the image file's bytes (or of the text), so a renamed, copied or
re-collected image is never embedded twice, and an image that changed is never served a stale value.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import numpy as np


def file_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(("text\x00" + text).encode()).hexdigest()


class MetricCache:
    """Vectors by (model, hash) and numbers by (model, key); `MetricCache(None)` keeps them in memory."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._db = sqlite3.connect(":memory:" if path is None else str(path))
        self._db.execute("CREATE TABLE IF NOT EXISTS vec (model TEXT, hash TEXT, data BLOB, PRIMARY KEY (model, hash))")
        self._db.execute("CREATE TABLE IF NOT EXISTS num (model TEXT, key TEXT, value REAL, PRIMARY KEY (model, key))")

    def vectors(self, model: str, hashes: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for i in range(0, len(hashes), 500):
            part = hashes[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = self._db.execute(f"SELECT hash, data FROM vec WHERE model = ? AND hash IN ({marks})", [model, *part])
            found.update((h, np.frombuffer(data, dtype=np.float32)) for h, data in rows)
        return found

    def put_vectors(self, model: str, items: dict[str, np.ndarray]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO vec VALUES (?, ?, ?)",
                [(model, h, np.asarray(v, dtype=np.float32).tobytes()) for h, v in items.items()],
            )

    def numbers(self, model: str, keys: list[str]) -> dict[str, float]:
        found: dict[str, float] = {}
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = self._db.execute(f"SELECT key, value FROM num WHERE model = ? AND key IN ({marks})", [model, *part])
            found.update(rows)
        return found

    def put_numbers(self, model: str, items: dict[str, float]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO num VALUES (?, ?, ?)", [(model, k, float(v)) for k, v in items.items()]
            )

    def close(self) -> None:
        self._db.close()
