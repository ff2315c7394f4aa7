"""One writer per run directory: an OS file lock held for the whole run.

Two runs writing one directory (a second terminal, or the notebook and the command at once) would
each submit from their own view of the ledger and pay twice. The lock is the operating system's
(`flock`), so it is released when the process ends however it ends, kill -9 included; the file
beside it says who holds it, for the message the second run prints.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO

from zlab.errors import RunDirBusy

POLL_S = 0.25


class DirLock:
    """Holds `path` exclusively until `release()`; `acquire(wait_s)` waits at most that long."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self, wait_s: float = 0.0) -> DirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held open for the whole run)
        deadline = time.monotonic() + max(0.0, wait_s)
        while not _try_lock(handle):
            if time.monotonic() >= deadline:
                holder = _read_holder(self.path)
                handle.close()
                directory = self.path.parent.parent
                raise RunDirBusy(
                    f"run directory {directory} is being written by another zlab run ({holder}); wait for it to "
                    "finish (or pass --wait SECONDS), or choose another --out",
                    holder=holder,
                )
            time.sleep(POLL_S)
        handle.seek(0)
        handle.truncate()
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        info["command"] = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200]
        handle.write(json.dumps(info))
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the lock
            self._file = None


def _try_lock(handle: IO[str]) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "holder unknown"
    pid, host, command = info.get("pid", "?"), info.get("host", "?"), info.get("command", "?")
    return f"pid {pid} on {host}, `{command}` since {info.get('since')}"
