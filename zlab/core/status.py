"""Every status word the client uses, in one place: what the service says, what the poller tracks, what
the ledger records, what the results table shows and what the progress bar counts.

Each vocabulary is a `Literal`, so mypy rejects a misspelt word wherever one is written or compared;
the mappings between them are the small pure functions below. (The built-in server keeps its own words:
it speaks the wire protocol, it does not read it.)

    wire `Phase`      tracker `TrackPhase`    ledger `CellState`    table `TableStatus`   bar `BarState`
    (what /status,    (what the poller        (where a cell is;     (results.parquet's    (progress counts)
     /result say)      knows of a live job)    resume reads it)      `status` column)
    ---------------   ---------------------   -------------------   -------------------   ----------------
    —                 —                       planned               planned               waiting
    —                 unknown (not yet asked) submitting            pending               pending
    queued            queued                  accepted              pending               queued
    running           running                 accepted              pending               running
    completed         finished (ask /result)  accepted              pending               running
    succeeded         finished                succeeded             succeeded             succeeded | reused
    failed            finished                failed                failed                failed
    cancelled         finished                cancelled             cancelled             cancelled
    —                 —                       unknown               unknown               unknown
    —                 —                       lost                  lost                  lost

Reading the wire is tolerant (`zlab.core.protocol.read_phase`): words compare case-insensitively, other
queues' spellings (`in_queue`, `canceled`, `error`, …) map onto `Phase`, and a word zlab does not know is
a phase still going (`running`), never terminal and never an error that would strand a paid job.

`accepted` is one ledger state for a job anywhere at the service; the bar shows such a job `queued` or
`running` as its poller last saw it (`bar_state_at_service`), and `pending` once collecting it failed for
now (a rerun collects it). The table says `pending` for both `submitting` and `accepted`: the job is the
service's, its outcome not yet recorded.
"""

from __future__ import annotations

from typing import Literal, get_args

# -- the wire --------------------------------------------------------------------------------------

Phase = Literal["queued", "running", "completed", "succeeded", "failed", "cancelled"]
"""A job's phase as the service reports it (both of RunComfy's vocabularies, read onto one)."""
TERMINAL: frozenset[Phase] = frozenset({"completed", "succeeded", "failed", "cancelled"})
"""Phases after which the job never runs again (`completed` on /status: its /result is ready to read)."""
FINISHED: frozenset[Phase] = frozenset({"succeeded", "failed", "cancelled"})
"""Phases a /result ends with: the job's outcome is known."""
CancelOutcome = Literal["cancelled", "not_cancellable", "unknown"]
"""What a cancel request achieved (`unknown`: ask /status, which always knows)."""

# -- the poller ------------------------------------------------------------------------------------

TrackPhase = Literal["unknown", "queued", "running", "finished"]
"""What the poller knows of one live job: not asked yet, queued, running, or finished (its /result next)."""

# -- the ledger ------------------------------------------------------------------------------------

CellState = Literal["planned", "submitting", "accepted", "succeeded", "failed", "cancelled", "unknown", "lost"]
"""Where one cell of a run is, as its ledger records it (`zlab.runs.ledger` says how a cell moves)."""
CELL_STATES: tuple[CellState, ...] = get_args(CellState)

# -- the results table -----------------------------------------------------------------------------

TableStatus = Literal["planned", "pending", "succeeded", "failed", "cancelled", "unknown", "lost"]
"""The results table's `status` column: the ledger's state, with a job the service holds shown `pending`."""

# -- the progress bar ------------------------------------------------------------------------------

BarState = Literal[
    "waiting", "queued", "running", "pending", "succeeded", "reused", "failed", "cancelled", "unknown", "lost"
]
"""What the progress bar counts a cell as: not at the service yet (`waiting`), at the service (`queued`,
`running`), accepted but not collected in this run (`pending`), or ended (`reused`: its image came from
the run directory or the shared cache, so it took no generation time)."""


def is_terminal(phase: Phase) -> bool:
    """Whether a job in `phase` will never run again."""
    return phase in TERMINAL


def is_finished(phase: Phase) -> bool:
    """Whether a /result in `phase` carries the job's outcome (its image, its error, or its cancelling)."""
    return phase in FINISHED


def is_paid(state: CellState) -> bool:
    """Whether the service may hold (and bill) a cell's job that is not yet collected: it was sent and the
    answer was never heard (`submitting`), or it was accepted."""
    return state in ("submitting", "accepted")


def table_status(state: CellState) -> TableStatus:
    """The results table's word for a ledger state: a job held by the service is `pending`."""
    if state == "submitting" or state == "accepted":
        return "pending"
    return state


def bar_state(state: CellState, *, reused: bool = False) -> BarState:
    """Where a cell that just moved to `state` is counted on the progress bar (`reused`: its image came
    from the run directory or the cache)."""
    if reused:
        return "reused"
    if state == "planned":
        return "waiting"  # refused before the service took it, or cancelled there and to be sent again
    if state == "submitting" or state == "accepted":
        return "pending"
    return state


def bar_state_at_service(phase: TrackPhase) -> BarState | None:
    """How the bar shows a job its poller saw `phase`: `queued` or `running`; None when the phase says
    nothing new to show (not asked yet, or finished with its outcome still to be recorded)."""
    if phase == "queued" or phase == "running":
        return phase
    return None


def bar_finished(state: BarState) -> bool:
    """Whether a cell counted as `state` has ended for this run (the bar advances)."""
    return state not in ("waiting", "queued", "running")
