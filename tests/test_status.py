"""One status vocabulary: the mappings between the wire, the poller, the ledger, the table and the progress bar,
table-driven, and every word a real run writes (ledger, table, bar) checked against its `Literal`."""

from __future__ import annotations

import re
import sqlite3
from typing import get_args

import pytest

from zlab import errors
from zlab.client import Client
from zlab.core import polling, protocol, runplan, status
from zlab.core.request import Request
from zlab.core.status import BarState, CellState, Phase, TableStatus, TrackPhase
from zlab.runs.ledger import CellFields, Ledger, LedgerRow
from zlab.runs.progress import shown_in
from zlab.runs.sweep import Sweep
from zlab.server import Faults, LocalServer

CELL_STATES = set(get_args(CellState))
TABLE = set(get_args(TableStatus))
BAR = set(get_args(BarState))
PHASES = set(get_args(Phase))
# ledger state → (results table, progress bar; a reused image is "reused" whatever its state)
STATES = [
    ("planned", "planned", "waiting"),
    ("submitting", "pending", "pending"),
    ("accepted", "pending", "pending"),
    ("succeeded", "succeeded", "succeeded"),
    ("failed", "failed", "failed"),
    ("cancelled", "cancelled", "cancelled"),
    ("unknown", "unknown", "unknown"),
    ("lost", "lost", "lost"),
]


@pytest.mark.parametrize(("state", "table", "bar"), STATES)
def test_a_ledger_state_maps_onto_the_table_and_the_bar(state, table, bar):
    assert status.table_status(state) == table
    assert status.bar_state(state) == bar
    assert status.bar_state(state, reused=True) == "reused"
    assert status.is_paid(state) == (state in ("submitting", "accepted"))


def test_the_state_table_covers_every_ledger_state_and_lands_in_the_target_vocabularies():
    assert {row[0] for row in STATES} == CELL_STATES
    for state in CELL_STATES:
        assert status.table_status(state) in TABLE
        assert status.bar_state(state) in BAR and status.bar_state(state, reused=True) in BAR


@pytest.mark.parametrize(
    ("phase", "terminal", "finished"),
    [
        ("queued", False, False),
        ("running", False, False),
        ("completed", True, False),  # /status says done: the outcome is read from /result
        ("succeeded", True, True),
        ("failed", True, True),
        ("cancelled", True, True),
    ],
)
def test_wire_phases(phase, terminal, finished):
    assert status.is_terminal(phase) == terminal == protocol.Status(phase).terminal
    assert status.is_finished(phase) == finished == protocol.Outcome(phase).finished


@pytest.mark.parametrize(
    ("word", "phase"),
    [
        ("in_queue", "queued"),
        ("QUEUED", "queued"),
        ("in-progress", "running"),
        ("completed", "completed"),
        ("success", "succeeded"),
        ("error", "failed"),
        ("canceled", "cancelled"),
        ("starting", "running"),  # another queue's "still going"
        ("warming up", "running"),  # a word zlab does not know: still going, never terminal
        (None, "running"),
    ],
)
def test_every_wire_word_reads_as_a_phase(word, phase):
    assert protocol.read_phase(word)[0] == phase and phase in PHASES


@pytest.mark.parametrize(
    ("phase", "bar"),
    [("unknown", None), ("queued", "queued"), ("running", "running"), ("finished", None)],
)
def test_a_tracked_phase_shows_on_the_bar_only_while_at_the_service(phase, bar):
    assert phase in get_args(TrackPhase)
    assert status.bar_state_at_service(phase) == bar


@pytest.mark.parametrize(("bar", "finished"), [(s, s not in ("waiting", "queued", "running")) for s in sorted(BAR)])
def test_the_bar_advances_only_for_cells_that_ended_in_this_run(bar, finished):
    assert status.bar_finished(bar) == finished


def test_the_old_names_are_the_one_vocabulary():
    assert protocol.Phase is status.Phase and protocol.TERMINAL is status.TERMINAL
    assert protocol.CancelOutcome is status.CancelOutcome
    assert polling.TrackPhase is status.TrackPhase and runplan.CellState is status.CellState
    assert not hasattr(polling, "SeenPhase")  # the copy of the wire's phases is gone


@pytest.mark.parametrize(
    "exc",
    [
        errors.SubmitUnknownError("dropped"),
        errors.AuthError("no", status_code=401),
        errors.InsufficientBalance("empty", status_code=402),
        errors.RateLimitedError("slow down", status_code=429),
        errors.ServerError("boom", status_code=500),
        errors.TransportError("refused"),
        errors.ValidationError("seed", -2, "a seed"),
        errors.WaitTimeout("late"),
        errors.DownloadError("gone"),
        OSError("disk full"),
    ],
)
def test_every_next_state_the_plan_gives_is_a_ledger_state(exc):
    states = {runplan.after_submit_error(exc).state}
    states |= {runplan.after_collect_error(exc, n).state for n in range(runplan.MAX_COLLECT_ATTEMPTS + 1)}
    states.add(runplan.after_collect_error(exc, 0, timed_out_cancelled=True).state)
    states |= {runplan.after_outcome(p, "why", n).state for p in ("failed", "cancelled") for n in (0, 1)}
    assert states <= CELL_STATES


def test_ledger_rows_are_typed_by_the_table_they_come_from(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.add([("a", 0, {"seed": 1}, 0.01), ("b", 1, {"seed": 2}, None)])
        ledger.mark_submitting("a", "http://x", "http://x")
        ledger.mark_submitting("b", "http://x", "http://x")
        ledger.update("b", status="accepted", request_id="r1")
        assert ledger.recover() == 1  # "a" never heard back
        rows = ledger.rows()
        assert [r["status"] for r in rows] == ["unknown", "accepted"]  # words written in SQL are states too
        assert all(set(r) == set(LedgerRow.__annotations__) for r in rows)
        assert set(CellFields.__annotations__) < set(LedgerRow.__annotations__)
        with pytest.raises(ValueError, match="acceptd"):
            ledger.update("b", status="acceptd")  # a misspelt state never reaches the ledger
        with pytest.raises(ValueError, match="stauts"):
            ledger.update("b", stauts="accepted")  # nor a misspelt column (names go into the SQL)
        assert ledger.get("b")["status"] == "accepted"
    finally:
        ledger.close()


def test_every_status_a_real_run_writes_is_in_its_vocabulary(tmp_path):
    """Failures, unheard submits and missing images, through the local server: the ledger's, the table's and the
    progress bar's words are each members of their Literal, and the table says what the ledger holds."""
    base = Request("a fox", width=256, height=256, seed=1)
    drawn: list[str] = []
    faults = Faults(seed=7, job_failure=0.3, drop_submit_after=0.2, endpoints=())
    with LocalServer(latency=0.01, capacity=4, faults=faults) as srv, Client(base_url=srv.base_url) as client:
        with shown_in(drawn.append):
            result = client.run(Sweep(base, axes={"seed": list(range(1, 13))}), tmp_path / "run", cache=False)
    ledger_path = tmp_path / "run" / ".zlab" / "ledger.sqlite"
    with sqlite3.connect(ledger_path) as db:
        written = dict(db.execute("SELECT key, status FROM cells"))
    assert set(written.values()) <= CELL_STATES and len(set(written.values())) >= 3  # the faults did their part
    assert set(result.df.status) <= TABLE and set(result.counts) <= TABLE
    table = dict(zip(result.df.key, result.df.status, strict=True))
    assert {k: status.table_status(s) for k, s in written.items()} == table
    shown = {word for html in drawn for word in re.findall(r"· \d+ ([a-z]+)(?= ·|<)", html)}  # not "14 img/s"
    assert shown and shown <= BAR
