"""One background event loop on a daemon thread: how the sync facade runs the async core.

It works the same in a script and inside Jupyter (where the main thread already runs a loop and
`asyncio.run` is forbidden). Ctrl-C while waiting cancels the coroutine on the loop, gives it a few
seconds to clean up (e.g. cancel queued jobs, record state), then re-raises KeyboardInterrupt.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
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


def run_sync(coro: Coroutine[Any, Any, T], *, result_on_interrupt: bool = False) -> T:
    """Run `coro` on the background loop and block until it finishes.

    On Ctrl-C the coroutine is cancelled and given CLEANUP_S to finish; then KeyboardInterrupt is raised,
    unless `result_on_interrupt` and the coroutine ended with a result of its own (an interrupted run's)."""
    target = loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is target:
        coro.close()
        raise RuntimeError("zlab's sync API was called from its own event loop; use zlab.AsyncClient there")
    tasks: list[asyncio.Task[T]] = []

    async def tracked() -> T:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        return await coro

    future = asyncio.run_coroutine_threadsafe(tracked(), target)
    try:
        # Short slices, not one blocking wait: a SIGINT delivered to another thread only sets a flag,
        # which the main thread acts on when it next runs Python code.
        # (Not `result(timeout=…)` in a loop: its TimeoutError is the builtin one, which zlab's own
        # WaitTimeout subclasses, so a job's timeout would be mistaken for "not done yet".)
        while not future.done():
            concurrent.futures.wait([future], timeout=0.1)
        return future.result()
    except KeyboardInterrupt:
        finished = threading.Event()

        def cancel() -> None:  # on the loop: cancel the task itself and wait for its cleanup to end
            if not tasks or tasks[0].done():
                finished.set()
                return
            tasks[0].add_done_callback(lambda _: finished.set())
            tasks[0].cancel()

        target.call_soon_threadsafe(cancel)
        finished.wait(CLEANUP_S)
        if result_on_interrupt and future.done() and not future.cancelled() and future.exception() is None:
            return future.result()
        raise


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel."""
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    kernel = get() if get else None
    return kernel is not None and "IPKernelApp" in getattr(kernel, "config", {})


def say(line: str) -> None:
    """A routine line: stdout in a notebook (stderr is painted as an error there), stderr in a terminal."""
    print(line, file=sys.stdout if in_notebook() else sys.stderr, flush=True)
