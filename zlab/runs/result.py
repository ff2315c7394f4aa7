"""What a run left behind: `RunResult`, its one-line summary (with the reasons), and the command's exit code."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from zlab.core.runplan import Stop
from zlab.runs.sweep import Estimate
from zlab.runs.tables import PICKS_FILE, with_picks

EXIT_CODES = {"token": 3, "balance": 4}
_STOP_WORDS = {
    "token": "the token was refused",
    "balance": "the account's balance ran out",
}


@dataclasses.dataclass
class RunResult:
    """What a run left behind: the sweep's results (its view of `out/results.parquet`, which holds every
    cell the directory has) and its tallies.

    `df` is `frame` with the gallery's picks as `favourite` and `rating` columns, read from ``out/picks.json``
    when you look: a star made after the run ended shows up in ``res.df``.
    """

    frame: pd.DataFrame  # the sweep's rows as the run left them (no picks)
    out: Path
    counts: dict[str, int]
    elapsed_s: float
    estimate: Estimate
    calls: dict[str, int]
    interrupted: bool = False
    stopped: Stop | None = None  # why sending stopped early, if it did
    reasons: str = ""  # failures grouped by reason, e.g. "2 failed: token refused (403) ×2"
    notes: tuple[str, ...] = ()  # jobs held at another API, orphans collected, …
    # (cost, "service" or "estimate") of each image generated (and paid for) in this run: not reused, not cached
    paid_costs: tuple[tuple[float, str], ...] = ()
    directory_paid_usd: float | None = None  # every image the run directory holds, by the same rule
    _picked: tuple[Any, pd.DataFrame] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def df(self) -> pd.DataFrame:
        """The sweep's results with `favourite` and `rating` as picks.json says now. The same object is
        returned until picks.json changes, so columns you add to it stay until then."""
        try:
            stat = os.stat(Path(self.out) / PICKS_FILE)
            stamp: Any = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except OSError:
            stamp = None
        # A dry run's plan has no images to pick from: it stays as planned.
        if self._picked is None or self._picked[0] != stamp:
            self._picked = (stamp, with_picks(self.frame, self.out) if "image_path" in self.frame else self.frame)
        return self._picked[1]

    @df.setter
    def df(self, value: pd.DataFrame) -> None:
        self.frame, self._picked = value, None

    @property
    def ok(self) -> bool:
        """True when every cell succeeded (the command then exits 0)."""
        return not self.interrupted and self.counts.get("succeeded", 0) == len(self.frame)

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
            f"zlab: {len(self.frame)} cells: {tallies} in {self.elapsed_s:.1f} s, {calls} API calls, "
            f"{self.paid()}; results in {self.out}{stop}"
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

    @property
    def paid_usd(self) -> float:
        """What this run's new images cost: the service's own figure for each, else the price."""
        return sum(cost for cost, _ in self.paid_costs)

    @property
    def paid_images(self) -> int:
        """How many new images this run paid for (cache hits and images found in the directory cost nothing)."""
        return len(self.paid_costs)

    @property
    def paid_source(self) -> str:
        """Where the paid figure came from: "service", "estimate" (the price), "mixed", or "" (nothing paid)."""
        sources = {source for _, source in self.paid_costs}
        return sources.pop() if len(sources) == 1 else "mixed" if sources else ""

    def to_mlflow(self, **options: Any) -> str:
        """Export the run directory to MLflow (one MLflow run per directory, updated by each export) and
        return the MLflow run's id; needs ``pip install "zlab[mlflow]"``. Options: `tracking_uri`,
        `experiment`, `run_name`, `reports` (see `zlab.export.mlflow.to_mlflow`)."""
        from zlab.export.mlflow import to_mlflow  # above this layer by design: see tests/test_layers.py

        return to_mlflow(self, **options)

    def paid(self) -> str:
        """What was paid, apart from the plan's estimate: 'paid $0.12 for 12 new images (the service's cost),
        ≈$0.18 estimated; $0.40 in the directory'. A stopped or interrupted run paid less than it planned."""
        source = {
            "service": "the service's cost",
            "estimate": "at the price",
            "mixed": "the service's cost or the price",
        }
        how = f" ({source[self.paid_source]})" if self.paid_images and self.paid_source in source else ""
        plural = "" if self.paid_images == 1 else "s"
        text = f"paid ${self.paid_usd:.2f} for {self.paid_images} new image{plural}{how}"
        text += f", ≈${self.estimate.cost_usd:.2f} estimated"
        if self.directory_paid_usd is not None and abs(self.directory_paid_usd - self.paid_usd) > 1e-9:
            text += f"; ${self.directory_paid_usd:.2f} in the directory"
        return text

    def __repr__(self) -> str:
        return f"<RunResult {self.summary()}>"


def paid_for(rows: Iterable[Mapping[str, Any]]) -> float:
    """What a run directory's images cost, from its ledger rows: every succeeded cell not copied from the cache."""
    return sum(row["cost_usd"] or 0.0 for row in rows if row["status"] == "succeeded" and not row.get("cached"))
