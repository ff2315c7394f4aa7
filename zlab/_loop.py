"""One background event loop on a daemon thread: how the sync facade runs the async core.

It works the same in a script and inside Jupyter (where the main thread already runs a loop and
`asyncio.run` is forbidden). Ctrl-C while waiting cancels the coroutine on the loop, gives it a few
seconds to clean up (e.g. cancel queued jobs, record state), then re-raises KeyboardInterrupt.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CLEANUP_S = 15.0  # how long Ctrl-C waits for a cancelled run to record its state

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def loop() -> asyncio.AbstractEventLoop:
    """The shared background loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            ready = threading.Event()
            new_loop = asyncio.new_event_loop()

            def run() -> None:
                asyncio.set_event_loop(new_loop)
                ready.set()
                new_loop.run_forever()

            threading.Thread(target=run, name="zlab-loop", daemon=True).start()
            ready.wait(10)
            _loop = new_loop
        return _loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the background loop and block until it finishes."""
    target = loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is target:
        coro.close()
        raise RuntimeError("zlab's sync API was called from its own event loop; use zlab.AsyncClient there")
    future = asyncio.run_coroutine_threadsafe(coro, target)
    try:
        return future.result()
    except KeyboardInterrupt:
        future.cancel()  # cancels the task on the loop: the runner cancels queued jobs and records state
        with contextlib.suppress(Exception):  # cancelled, timed out or failed: the interrupt wins either way
            future.result(timeout=CLEANUP_S)
        raise
