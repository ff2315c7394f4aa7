"""A run's progress: how many cells are done, running at the server, queued at the server and not yet
sent, with a throughput and an ETA learned from what the run has seen so far.

In a notebook it is an HTML block updated in place (IPython display ids, no widget): whatever the
notebook is saved with, restarted, exported or turned into a report, the output holds its last state,
which after `close()` is the final tally. In a terminal it is one line on stderr redrawn with ``\\r``.
`ProgressState` (pure) does the counting and the arithmetic; `Progress` only decides when to draw.

>>> p = Progress(total=3, done=0, enabled=False)
>>> p.counts["waiting"] = 3
>>> p.move("waiting", "queued"); p.move("queued", "running"); p.move("running", "succeeded", finished=True)
>>> p.state.finished, p.counts["running"], p.counts["queued"]
(1, 0, 0)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import html
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from zlab.core.config import in_report
from zlab.core.status import BarState

__all__ = ["Progress", "ProgressState", "shown_in"]

_REDRAW_S = 0.25  # at most four redraws a second: updates are cheap, but each is an iopub message
_WINDOW = 32  # finishes used for the throughput: recent enough to follow a change of pace
_SHOWN: tuple[BarState, ...] = ("running", "queued", "succeeded", "reused", "failed", "cancelled", "pending", "unknown",
                                 "lost")  # fmt: skip
_COLOURS: dict[BarState, str] = {"succeeded": "#2e7d32", "failed": "#c62828", "running": "#1565c0", "queued": "#90caf9"}


@dataclasses.dataclass
class ProgressState:
    """Counts by state plus finish times: what the bar and the ETA are computed from (no I/O)."""

    total: int
    done: int = 0  # finished before this run started (resumed cells)
    counts: collections.Counter[BarState] = dataclasses.field(default_factory=collections.Counter)
    started: float = dataclasses.field(default_factory=time.monotonic)
    finishes: collections.deque[float] = dataclasses.field(default_factory=lambda: collections.deque(maxlen=_WINDOW))
    finished: int = 0  # finished during this run
    closed_at: float | None = None

    def move(self, old: BarState | None, new: BarState, finished: bool = False, now: float | None = None) -> None:
        """One cell changes state; `finished` when it will not change again in this run."""
        if old:
            self.counts[old] -= 1
        self.counts[new] += 1
        if finished:
            self.finished += 1
            if new != "reused":  # a cell taken from the directory or the cache took no generation time
                self.finishes.append(time.monotonic() if now is None else now)

    @property
    def complete(self) -> int:
        return min(self.total, self.done + self.finished)

    def rate(self, now: float | None = None) -> float | None:
        """Generated cells per second over the recent finishes (None until two have been seen; reused cells
        are counted apart, as "N reused", never as a rate)."""
        now = time.monotonic() if now is None else now
        if len(self.finishes) < 2:
            return None
        # From the window's first finish to now: a stall since the last finish slows the rate down.
        span = max(now, self.finishes[-1]) - self.finishes[0]
        return (len(self.finishes) - 1) / span if span > 0 else None

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds until every cell is finished at the learned rate (None while it is unknown)."""
        left = self.total - self.complete
        if left <= 0:
            return 0.0
        rate = self.rate(now)
        return left / rate if rate else None

    def elapsed_s(self, now: float | None = None) -> float:
        end = self.closed_at if self.closed_at is not None else (time.monotonic() if now is None else now)
        return end - self.started

    def parts(self) -> list[tuple[BarState, int]]:
        """(state, count) worth showing, in a fixed order; `waiting` is what has not reached the server."""
        shown = [(s, self.counts[s]) for s in _SHOWN if self.counts[s] > 0]
        at_server = self.counts["running"] + self.counts["queued"]
        waiting = self.total - self.complete - at_server
        if self.closed_at is None and waiting > 0:
            shown.insert(2 if at_server else 0, ("waiting", waiting))
        return shown

    def text(self, now: float | None = None) -> str:
        """'zlab 12/40 · 4 running · 8 queued · 1 failed · 2.1 img/s · ETA 13 s' (or the final tally)."""
        bits = [f"zlab {self.complete}/{self.total}", *(f"{n} {s}" for s, n in self.parts())]
        rate = self.rate(now)
        if rate:
            bits.append(f"{rate:.2g} img/s")
        if self.closed_at is None:
            eta = self.eta_s(now)
            if eta is not None and eta > 0:
                bits.append(f"ETA {_duration(eta)}")
        else:
            bits.append(f"took {_duration(self.elapsed_s())}")
        return " · ".join(bits)

    def html(self, now: float | None = None) -> str:
        """A static HTML bar: a stacked strip per state (done, running, queued) and the text line."""
        total = max(self.total, 1)
        failed = self.counts["failed"] + self.counts["cancelled"]
        widths: dict[BarState, int] = {
            "succeeded": max(0, self.complete - failed),  # resumed cells count as done even if uncounted
            "failed": failed,
            "running": self.counts["running"],
            "queued": self.counts["queued"],
        }
        segments = [
            f"<div title='{n} {state}' style='width:{100 * n / total:.2f}%;background:{_COLOURS[state]}'></div>"
            for state, n in widths.items()
            if n > 0
        ]
        label = html.escape(self.text(now))
        return (
            "<div class='zlab-progress' style='font:12px/1.4 system-ui,sans-serif;max-width:640px;margin:2px 0'>"
            "<div style='display:flex;height:8px;background:#e8e8e8;border-radius:4px;overflow:hidden'>"
            f"{''.join(segments)}</div><div style='color:#444;margin-top:2px'>{label}</div></div>"
        )


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


_SINKS: list[Callable[[str], None]] = []  # innermost last; a plain list: runs draw from the event-loop thread


@contextlib.contextmanager
def shown_in(draw: Callable[[str], None]) -> Iterator[None]:
    """Within this block, progress is drawn by calling `draw(html)` instead of as a notebook output.

    For a widget that shows runs inside itself: the SweepBuilder sets an HTML widget's value, since
    display updates do not reach outputs captured by an ipywidgets `Output`.
    """
    _SINKS.append(draw)
    try:
        yield
    finally:
        _SINKS.remove(draw)


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (HTML outputs); False in a terminal IPython or a plain script."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


class Progress:
    """Progress of one run: ``Progress(total, done, enabled)``, ``.counts``, ``.move(old, new, finished)``,
    ``.close()``.

    States are `zlab.core.status.BarState`s; `queued` (waiting at the server) and `running` are shown
    apart, and cells not yet at the server as `waiting`. `done` counts cells finished before the run
    (a resume). Drawing is throttled; `close()` draws the final state once more and leaves it in place.
    `enabled=False` (or no notebook and no terminal) counts without drawing.
    """

    def __init__(self, total: int, done: int = 0, enabled: bool = True, *, file: Any = None) -> None:
        self.state = ProgressState(total=total, done=done)
        self._file = file if file is not None else sys.stderr
        self._last = 0.0
        self._handle: Any = None
        self._draw: Callable[[bool], None] | None = None
        if enabled:
            if _SINKS:
                sink = _SINKS[-1]
                self._draw = lambda _force: sink(self.state.html())
            elif _in_kernel():
                self._draw = self._draw_html
            elif not in_report() and getattr(self._file, "isatty", lambda: False)():
                self._draw = self._draw_text
        self._refresh(force=True)

    @property
    def counts(self) -> collections.Counter[BarState]:
        """Cells by state (the runner may set initial counts directly)."""
        return self.state.counts

    @property
    def total(self) -> int:
        return self.state.total

    def move(self, old: BarState | None, new: BarState, finished: bool = False) -> None:
        """One cell moves from state `old` (None: newly counted) to `new`; `finished` advances the bar."""
        self.state.move(old, new, finished)
        self._refresh(force=finished and self.state.complete >= self.state.total)

    def close(self) -> None:
        """Draw the final tally and stop (idempotent)."""
        if self.state.closed_at is not None:
            return
        self.state.closed_at = time.monotonic()
        self._refresh(force=True)
        if self._draw == self._draw_text:
            self._file.write("\n")
            self._file.flush()

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._draw is None or (not force and now - self._last < _REDRAW_S):
            return
        self._last = now
        self._draw(force)

    def _draw_html(self, _force: bool) -> None:
        from IPython.display import HTML, display

        bundle = HTML(self.state.html())
        if self._handle is None:
            self._handle = display(bundle, display_id=True)
        else:
            self._handle.update(bundle)

    def _draw_text(self, _force: bool) -> None:
        self._file.write("\r" + self.state.text()[:160] + "\x1b[K")
        self._file.flush()

    def _repr_html_(self) -> str:
        return self.state.html()

    def __repr__(self) -> str:
        return f"<Progress {self.state.text()}>"
