"""The run directory: a SQLite ledger that makes resume safe, the images, and results.parquet.

    DIR/results.parquet     one row per cell (the contract columns)
    DIR/images/KEY.png      each image, named by its request key, with the request as PNG metadata
    DIR/sweep.json          the sweep as last run (for people; the ledger holds what resume needs)
    DIR/.zlab/ledger.sqlite each cell's state, written *before* its submit leaves; the drawn seeds
    DIR/.zlab/lock          held by the one process writing the directory (`zlab.runs.lock`)

The ledger is the source of truth. A cell is `submitting` right before its POST leaves and `accepted`
with its request id (and the API that accepted it) the moment the answer arrives, so a process killed
at any instant never loses a paid job: on resume, accepted cells are polled by id at that API, never
resubmitted. A cell left `submitting` (killed between sending and hearing back) may or may not have
been accepted: it becomes `unknown` and is resent only when asked (`retry_unknown`). A paid job whose
image cannot be fetched stays `accepted` and is collected again; after `MAX_COLLECT_ATTEMPTS` it is
`lost` (never resent on its own). Committed rows survive SIGKILL (WAL journal).

    planned → submitting → accepted → succeeded | failed | cancelled | lost
    submitting (found on resume) → unknown

The states are `zlab.core.status.CellState`; rows come out typed (`LedgerRow`) and go in typed (`Ledger.update`
takes `CellFields`), so a misspelt state or column fails mypy, and at run time `update` refuses it too.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict, Unpack, cast

import pandas as pd
from PIL import Image

from zlab.api.download import write_atomic
from zlab.core.status import CELL_STATES, CellState, table_status
from zlab.core.table import EXTRA_COLUMNS, RESULT_COLUMNS
from zlab.errors import ConfigError
from zlab.runs.lock import DirLock

MAX_COLLECT_ATTEMPTS = 5  # tries to fetch a paid job's image before it is called lost
_SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY, idx INTEGER, params TEXT NOT NULL, status TEXT NOT NULL,
    request_id TEXT, error TEXT, image_path TEXT, image_url TEXT,
    submitted_at TEXT, finished_at TEXT, queue_s REAL, run_s REAL, cost_usd REAL, base_url TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, cached INTEGER NOT NULL DEFAULT 0, updated REAL
);
CREATE TABLE IF NOT EXISTS seeds (slot INTEGER PRIMARY KEY, seed INTEGER NOT NULL);
"""
# Columns added since 0.1; a ledger written by 0.1 gains them on open.
_ADDED = {
    "origin": "TEXT",  # the API that accepted the job (`AsyncClient.identity`)
    "reason": "TEXT",  # a short label of why a cell is where it is, for the summary's tallies
    "collect_attempts": "INTEGER NOT NULL DEFAULT 0",
    "cost_source": "TEXT",
    "image_width": "INTEGER",
    "image_height": "INTEGER",
    "note": "TEXT",
    "backend": "TEXT",  # JSON: a local server's facts about the render
}


class CellFields(TypedDict, total=False):
    """The columns of a cell that a run writes as the cell moves (`Ledger.update`'s keywords): mypy rejects a
    misspelt column or a state that is no `CellState`."""

    status: CellState
    request_id: str | None
    error: str | None  # the full message, for people
    reason: str | None  # a short label, for the summary's tallies
    image_path: str | None  # relative to the run directory
    image_url: str | None
    submitted_at: str | None  # ISO 8601
    finished_at: str | None
    queue_s: float | None
    run_s: float | None
    cost_usd: float | None
    cost_source: str | None
    base_url: str | None
    origin: str | None  # the API that accepted the job
    collect_attempts: int
    cached: int  # 1: the image was copied from the shared cache
    image_width: int | None
    image_height: int | None
    note: str | None
    backend: str | None  # JSON


class LedgerRow(TypedDict):
    """One cell as the ledger holds it (`Ledger.rows()`, `Ledger.get()`): every column of its table."""

    key: str
    idx: int | None
    params: str  # JSON: the cell's request as table columns
    status: CellState
    request_id: str | None
    error: str | None
    image_path: str | None
    image_url: str | None
    submitted_at: str | None
    finished_at: str | None
    queue_s: float | None
    run_s: float | None
    cost_usd: float | None
    base_url: str | None
    attempts: int
    cached: int
    updated: float | None
    origin: str | None
    reason: str | None
    collect_attempts: int
    cost_source: str | None
    image_width: int | None
    image_height: int | None
    note: str | None
    backend: str | None


def _row(row: sqlite3.Row) -> LedgerRow:
    # The table's columns are LedgerRow's keys (a test holds them equal), and every status in it was written
    # through `update` (checked) or the literal SQL below.
    return cast(LedgerRow, dict(row))


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class Ledger:
    """Each cell's state in SQLite; every write is committed before the action it announces."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process; fsync per checkpoint
            self._db.execute("PRAGMA busy_timeout=10000")
            # A new ledger gets every column at once (one commit); an older one gains the missing ones below.
            added = "".join(f", {name} {kind}" for name, kind in _ADDED.items())
            self._db.executescript(_SCHEMA.replace("updated REAL\n)", f"updated REAL{added}\n)"))
            have = {row[1] for row in self._db.execute("PRAGMA table_info(cells)")}
            for name, kind in _ADDED.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE cells ADD COLUMN {name} {kind}")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise ConfigError(
                f"{path} is not a zlab ledger ({exc}): move it away to start this run directory afresh "
                "(its accepted jobs would then be forgotten), or choose another --out"
            ) from None
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        self._db.close()

    def add(self, rows: Iterable[tuple[str, int, Mapping[str, Any], float | None]]) -> None:
        """Record planned cells (key, index, params, cost); existing cells keep their state."""
        self._db.executemany(
            "INSERT INTO cells (key, idx, params, status, cost_usd, updated) VALUES (?, ?, ?, 'planned', ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET idx = excluded.idx",
            [(k, i, json.dumps(p, default=str), c, time.time()) for k, i, p, c in rows],
        )

    def set_costs(self, costs: Iterable[tuple[str, float]]) -> None:
        """Record each cell's estimated cost (cells added before the price was known)."""
        self._db.executemany("UPDATE cells SET cost_usd = ? WHERE key = ?", [(c, k) for k, c in costs])

    def update(self, key: str, **fields: Unpack[CellFields]) -> None:
        """Write some of a cell's columns (typed: see `CellFields`)."""
        unknown = set(fields) - set(CellFields.__annotations__)
        if unknown or fields.get("status", "planned") not in CELL_STATES:  # a column name goes into the SQL
            raise ValueError(f"not a ledger update: {sorted(unknown) or fields.get('status')!r}")
        values: dict[str, Any] = {**fields, "updated": time.time()}
        assignments = ", ".join(f"{name} = ?" for name in values)
        self._db.execute(f"UPDATE cells SET {assignments} WHERE key = ?", [*values.values(), key])

    def mark_submitting(self, key: str, base_url: str, origin: str) -> None:
        """The POST is about to leave: from now on the cell may be billed."""
        self._db.execute(
            "UPDATE cells SET status = 'submitting', attempts = attempts + 1, error = NULL, reason = NULL, "
            "request_id = NULL, collect_attempts = 0, base_url = ?, origin = ?, submitted_at = ?, updated = ? "
            "WHERE key = ?",
            (base_url, origin, now_iso(), time.time(), key),
        )

    def seeds(self) -> list[int]:
        """The seeds drawn for this directory's `-1` slots, in slot order."""
        return [row[0] for row in self._db.execute("SELECT seed FROM seeds ORDER BY slot")]

    def keep_seeds(self, seeds: Iterable[int]) -> None:
        """Record draws for slots that have none yet; slots already drawn keep their seed forever."""
        self._db.executemany(
            "INSERT OR IGNORE INTO seeds (slot, seed) VALUES (?, ?)", [(i, int(s)) for i, s in enumerate(seeds)]
        )

    def get(self, key: str) -> LedgerRow | None:
        """One cell, or None when the ledger has no such key."""
        row = self._db.execute("SELECT * FROM cells WHERE key = ?", (key,)).fetchone()
        return _row(row) if row else None

    def rows(self) -> list[LedgerRow]:
        """Every cell, in sweep order."""
        return [_row(r) for r in self._db.execute("SELECT * FROM cells ORDER BY idx")]

    def recover(self) -> int:
        """After a crash: cells caught between sending and hearing back become `unknown`."""
        return self._db.execute(
            "UPDATE cells SET status = 'unknown', error = 'the process stopped after sending this submit and "
            "before its answer was recorded: it may have been accepted (and billed)' WHERE status = 'submitting'"
        ).rowcount


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def intact_image(path: Path) -> bool:
    """Whether the file is a whole image (a file cut short, emptied or overwritten is not).

    Every rerun asks this of every image in the directory, so the formats zlab saves are checked by their
    framing, reading a few bytes at each end: a PNG ends with its IEND chunk, a JPEG with its end-of-image
    marker, a WebP's RIFF header states the file's length. Any other file is decoded whole."""
    try:
        with path.open("rb") as file:
            head = file.read(16)
            size = file.seek(0, 2)
            file.seek(max(0, size - 64))
            tail = file.read()
    except OSError:
        return False
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return tail.endswith(_PNG_END)
    if head.startswith(b"\xff\xd8\xff"):
        return b"\xff\xd9" in tail  # only the marker itself is FF D9: entropy-coded FFs are followed by 00
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return int.from_bytes(head[4:8], "little") + 8 == size
    try:
        with Image.open(path) as probe:
            probe.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False
    return True


class RunDir:
    """Paths and files of one run directory, held by this process alone (`wait_s`: how long to wait for
    another run that holds it)."""

    def __init__(self, root: str | Path, *, wait_s: float = 0.0) -> None:
        self.root = Path(root)
        self.images = self.root / "images"
        self.results = self.root / "results.parquet"
        self.spec = self.root / "sweep.json"
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--out {self.root} is a file, not a directory: choose a directory for the run")
        try:
            self.images.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the run directory {self.root}: {exc.strerror}") from None
        self._lock = DirLock(self.root / ".zlab" / "lock").acquire(wait_s)
        try:
            self.ledger = Ledger(self.root / ".zlab" / "ledger.sqlite")
        except BaseException:
            self._lock.release()
            raise

    def existing_image(self, key: str) -> Path | None:
        """An image already in the directory for this key (a finished cell whose record was lost), if whole."""
        for suffix in (".png", ".jpg", ".webp"):
            path = self.image_file(key, suffix)
            if path.is_file() and intact_image(path):
                return path
        return None

    def read_spec(self) -> dict[str, Any] | None:
        try:
            spec = json.loads(self.spec.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # missing, unreadable or junk: it is only a record for people
            return None
        return spec if isinstance(spec, dict) else None

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
        self._lock.release()


def results_frame(rows: Sequence[LedgerRow], extra_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Ledger rows → the contract's DataFrame: parameters, status/timing columns, axes, then added columns
    (`cost_source`, `image_width`/`image_height`, `note`, `cached`, and `backend_*` for local renders)."""
    records = []
    backend_columns: list[str] = []
    for row in rows:
        params = json.loads(row["params"])
        record = {column: params.get(column, row.get(column)) for column in RESULT_COLUMNS}
        record["status"] = table_status(row["status"])
        for column in extra_columns:
            record.setdefault(column, params.get(column))
        for column in EXTRA_COLUMNS:
            record[column] = row.get(column)
        record["cached"] = bool(row.get("cached"))
        backend = row["backend"]
        for name, value in (json.loads(backend) if backend else {}).items():
            column = f"backend_{name}"
            record[column] = value if isinstance(value, str | int | float | bool) or value is None else str(value)
            if column not in backend_columns:
                backend_columns.append(column)
        records.append(record)
    axes = [c for c in extra_columns if c not in RESULT_COLUMNS and c not in EXTRA_COLUMNS]
    columns = [*RESULT_COLUMNS, *axes, *EXTRA_COLUMNS, *backend_columns]
    df = pd.DataFrame.from_records(records, columns=columns)
    for column in ("image_width", "image_height"):
        df[column] = df[column].astype("Int64")
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
            image = self.root / str(info.get("file", ""))
            return (image, info) if isinstance(info, dict) and image.is_file() else None
        except (OSError, ValueError, AttributeError):  # a missing, unreadable or junk cache entry is a miss
            return None

    def forget(self, key: str) -> None:
        """Drop a damaged entry (its image is rendered again and put back)."""
        (self.root / f"{key}.json").unlink(missing_ok=True)

    def put(self, key: str, image: Path, info: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / f"{key}{image.suffix}"
        if not target.exists() or not intact_image(target):
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
