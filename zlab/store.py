"""The run directory: a SQLite ledger that makes resume safe, the images, and results.parquet.

    DIR/results.parquet     one row per cell (the contract columns)
    DIR/images/KEY.png      each image, named by its request key, with the request as PNG metadata
    DIR/sweep.json          the sweep as written plus its seed draws (so a rerun uses the same seeds)
    DIR/.zlab/ledger.sqlite each cell's state, written *before* its submit is sent

The ledger is the source of truth. A cell is `submitting` before its POST goes out and `accepted`
with its request id the moment the answer arrives, so a process killed at any instant never loses a
paid job: on resume, accepted cells are polled by id, never resubmitted. A cell left `submitting`
(killed between sending and hearing back) may or may not have been accepted: it becomes `unknown`
and is resent only when asked (`retry_unknown`). Committed rows survive SIGKILL (WAL journal).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
import time
import zlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from zlab.download import write_atomic

RESULT_COLUMNS = (
    "key", "prompt", "width", "height", "seed",
    "lora1_path", "lora1_scale", "lora2_path", "lora2_scale", "lora3_path", "lora3_scale",
    "status", "error", "request_id", "image_path", "image_url",
    "submitted_at", "finished_at", "queue_s", "run_s", "cost_usd", "base_url",
)  # fmt: skip
# planned → submitting → accepted → succeeded | failed | cancelled;  submitting (found on resume) → unknown
OPEN_STATES = ("planned", "failed", "cancelled")  # sent (again) by a run
_SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY, idx INTEGER, params TEXT NOT NULL, status TEXT NOT NULL,
    request_id TEXT, error TEXT, image_path TEXT, image_url TEXT,
    submitted_at TEXT, finished_at TEXT, queue_s REAL, run_s REAL, cost_usd REAL, base_url TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, cached INTEGER NOT NULL DEFAULT 0, updated REAL
);
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class Ledger:
    """Each cell's state in SQLite; every write is committed before the action it announces."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process; fsync per checkpoint
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        self._db.close()

    def add(self, rows: Iterable[tuple[str, int, Mapping[str, Any], float]]) -> None:
        """Record planned cells (key, index, params, cost); existing cells keep their state."""
        self._db.executemany(
            "INSERT INTO cells (key, idx, params, status, cost_usd, updated) VALUES (?, ?, ?, 'planned', ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET idx = excluded.idx",
            [(k, i, json.dumps(p, default=str), c, time.time()) for k, i, p, c in rows],
        )

    def update(self, key: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._db.execute(f"UPDATE cells SET {assignments} WHERE key = ?", [*fields.values(), key])

    def mark_submitting(self, key: str, base_url: str) -> None:
        self._db.execute(
            "UPDATE cells SET status = 'submitting', attempts = attempts + 1, error = NULL, request_id = NULL, "
            "base_url = ?, submitted_at = ?, updated = ? WHERE key = ?",
            (base_url, now_iso(), time.time(), key),
        )

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM cells WHERE key = ?", (key,)).fetchone()
        return dict(row) if row else None

    def rows(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.execute("SELECT * FROM cells ORDER BY idx")]

    def recover(self) -> int:
        """After a crash: cells caught between sending and hearing back become `unknown`."""
        return self._db.execute(
            "UPDATE cells SET status = 'unknown', error = 'the process stopped after sending this submit and "
            "before its answer was recorded: it may have been accepted (and billed)' WHERE status = 'submitting'"
        ).rowcount


class RunDir:
    """Paths and files of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.images = self.root / "images"
        self.results = self.root / "results.parquet"
        self.spec = self.root / "sweep.json"
        self.images.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.root / ".zlab" / "ledger.sqlite")

    def read_spec(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.spec.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_spec(self, spec: Mapping[str, Any]) -> None:
        write_atomic(self.spec, json.dumps(spec, indent=2, default=str).encode())

    def image_file(self, key: str, suffix: str = ".png") -> Path:
        return self.images / f"{key}{suffix}"

    def save_image(self, key: str, data: bytes, suffix: str, metadata: Mapping[str, str]) -> str:
        """Write an image atomically (PNG gets `metadata` as text chunks); returns its path relative to root."""
        if suffix == ".png":
            data = png_with_text(data, metadata)
        path = self.image_file(key, suffix)
        write_atomic(path, data)
        return str(path.relative_to(self.root))

    def write_results(self, df: pd.DataFrame) -> None:
        tmp = self.results.with_suffix(".parquet.part")
        df.to_parquet(tmp, index=False)
        tmp.replace(self.results)

    def close(self) -> None:
        self.ledger.close()


def results_frame(rows: list[dict[str, Any]], extra_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Ledger rows → the contract's DataFrame: parameters, then status/timing columns, then axes."""
    records = []
    for row in rows:
        params = json.loads(row["params"])
        record = {column: params.get(column, row.get(column)) for column in RESULT_COLUMNS}
        record["status"] = "pending" if row["status"] in ("accepted", "submitting") else row["status"]
        for column in extra_columns:
            record.setdefault(column, params.get(column))
        record["cached"] = bool(row.get("cached"))
        records.append(record)
    columns = [*RESULT_COLUMNS, *[c for c in extra_columns if c not in RESULT_COLUMNS], "cached"]
    df = pd.DataFrame.from_records(records, columns=columns)
    for column in ("submitted_at", "finished_at"):
        df[column] = pd.to_datetime(df[column], utc=True, format="ISO8601")
    return df


def png_with_text(data: bytes, metadata: Mapping[str, str]) -> bytes:
    """Insert iTXt chunks right after IHDR, without re-encoding the image."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or not metadata:
        return data
    ihdr_end = 8 + 8 + struct.unpack(">I", data[8:12])[0] + 4
    chunks = b"".join(
        _png_chunk(b"iTXt", k.encode("latin-1") + b"\0\0\0\0\0" + v.encode()) for k, v in metadata.items()
    )
    return data[:ihdr_end] + chunks + data[ihdr_end:]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


class Cache:
    """Images shared across run directories, keyed by (API identity, request key); concrete seeds only."""

    def __init__(self, root: str | Path, identity: str) -> None:
        import hashlib

        self.root = Path(root) / hashlib.sha256(identity.encode()).hexdigest()[:16]

    def lookup(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        meta = self.root / f"{key}.json"
        try:
            info = json.loads(meta.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        image = self.root / info.get("file", "")
        return (image, info) if image.is_file() else None

    def put(self, key: str, image: Path, info: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / f"{key}{image.suffix}"
        if not target.exists():
            tmp = target.with_name(target.name + ".part")
            shutil.copyfile(image, tmp)
            tmp.replace(target)
        write_atomic(self.root / f"{key}.json", json.dumps({**info, "file": target.name}, default=str).encode())

    def copy_to(self, source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        try:
            tmp.hardlink_to(source)
        except OSError:
            shutil.copyfile(source, tmp)
        tmp.replace(target)
