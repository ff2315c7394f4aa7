"""What a run left behind: `RunResult`, its one-line summary (with the reasons), and the command's exit code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from zlab.core.runplan import Stop
from zlab.runs.sweep import Estimate

EXIT_CODES = {"token": 3, "balance": 4}
_STOP_WORDS = {
    "token": "the token was refused",
    "balance": "the account's balance ran out",
}


@dataclasses.dataclass
class RunResult:
    """What a run left behind: the results DataFrame (also in `out/results.parquet`) and its tallies."""

    df: pd.DataFrame
    out: Path
    counts: dict[str, int]
    elapsed_s: float
    estimate: Estimate
    calls: dict[str, int]
    interrupted: bool = False
    stopped: Stop | None = None  # why sending stopped early, if it did
    reasons: str = ""  # failures grouped by reason, e.g. "2 failed: token refused (403) ×2"
    notes: tuple[str, ...] = ()  # jobs held at another API, orphans collected, …

    @property
    def ok(self) -> bool:
        """True when every cell succeeded (the command then exits 0)."""
        return not self.interrupted and self.counts.get("succeeded", 0) == len(self.df)

    @property
    def exit_code(self) -> int:
        """The command's exit code: 0 all done, 1 some cells not, 3 token refused, 4 no balance, 130 interrupted."""
        if self.interrupted:
            return 130
        if self.stopped:
            return EXIT_CODES[self.stopped]
        return 0 if self.ok else 1

    def summary(self) -> str:
        """One line: counts by status, time, calls, cost, and why cells were not done (with counts)."""
        tallies = ", ".join(f"{n} {state}" for state, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))
        calls = sum(self.calls.values())
        stop = " (interrupted: rerun to resume)" if self.interrupted else ""
        lines = [
            f"zlab: {len(self.df)} cells: {tallies} in {self.elapsed_s:.1f} s, {calls} API calls, "
            f"≈${self.estimate.cost_usd:.2f} estimated; results in {self.out}{stop}"
        ]
        if self.reasons:
            lines.append(f"zlab: {self.reasons}")
        if self.stopped:
            unsent = self.counts.get("planned", 0)
            lines.append(
                f"zlab: stopped sending: {_STOP_WORDS[self.stopped]}; {unsent} cell(s) not sent (nothing paid for "
                "them), accepted jobs were still collected. Fix it, then run the same command again"
            )
        if unknown := self.counts.get("unknown"):
            lines.append(
                f"zlab: {unknown} cell(s) have an unknown submit outcome (they may have been billed): "
                "rerun with --retry-unknown (retry_unknown=True) to send them again"
            )
        if lost := self.counts.get("lost"):
            lines.append(
                f"zlab: {lost} paid job(s) whose image could not be collected are marked lost: "
                "rerun with --resend-lost (resend_lost=True) to pay for new ones"
            )
        lines.extend(f"zlab: {note}" for note in self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<RunResult {self.summary()}>"
