"""A run's decisions, as pure functions over typed cell states: what to do with each cell, and where a
cell goes after something happened to its job. The runner (`zlab.runs.runner`) does the I/O around them.

What to do with a cell at the start of a run (`decide`):

    its image is in the run directory, whole     → done (or `reuse`: recorded succeeded, nothing sent)
    succeeded, its image gone or broken          → collect again by its request id at the API that took it
                                                   (never paid again); without one, send (re-render)
    accepted, at the API this run talks to       → collect (poll by id; never resubmit); with no id on
                                                   record, held as unknown (it may be paid)
    accepted by the built-in server of a run that ended → send (that server is gone; nothing was billed)
    accepted by another API                      → elsewhere (left accepted; the summary says where)
    unknown (submit outcome never heard)         → hold, or send with retry_unknown (may pay twice);
                                                   sent when the built-in server took it (nothing billed)
    lost (paid, image never fetched)             → hold, or send with resend_lost (pays again)
    planned / failed / cancelled                 → from the shared cache when it has the image, else send

After something happens (`after_submit_error`, `after_collect_error`, `after_outcome`): a submit
that may have reached the service is `unknown`, never resent; anything after acceptance keeps the job
collectable (`accepted`, with the reason) until `MAX_COLLECT_ATTEMPTS`, then `lost`; a refused token
or an empty balance stops all further sending at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable
from typing import Literal

from zlab import errors
from zlab.core.status import CellState, Phase

Action = Literal["done", "reuse", "cache", "collect", "send", "elsewhere", "hold"]
Stop = Literal["token", "balance"]
BUILTIN = "zlab-builtin"  # the identity of a run's own built-in server (`AsyncClient.identity`)
MAX_COLLECT_ATTEMPTS = 5
MAX_RESENDS_AFTER_CANCEL = 1  # a job found cancelled while collecting is sent again once in the same run


@dataclasses.dataclass(frozen=True)
class CellView:
    """What `decide` needs to know of one cell."""

    state: CellState
    has_image: bool = False  # an intact image for its key is in the run directory
    cached: bool = False  # the shared cache holds its image
    origin: str | None = None  # the API that accepted its job
    request_id: bool = False  # the ledger holds its request id (a paid job can be collected again by it)


@dataclasses.dataclass(frozen=True)
class Next:
    """Where a cell goes after an event: its new state, a short reason (for tallies) and the full message."""

    state: CellState
    reason: str | None = None
    error: str | None = None
    stop: Stop | None = None  # stop all further sending (the token was refused, or the balance is empty)
    count_attempt: bool = False  # one more failed try at collecting a paid job


def decide(cell: CellView, *, identity: str, retry_unknown: bool = False, resend_lost: bool = False) -> Action:
    """What a run does with `cell` (see the module docstring)."""
    if cell.has_image:
        return "done" if cell.state == "succeeded" else "reuse"
    here = cell.origin == identity and identity != BUILTIN
    if cell.state == "succeeded" and cell.request_id and here:
        return "collect"  # paid already: fetched again by its id, never paid again
    if cell.state == "accepted":
        if here and not cell.request_id:  # accepted, but its id was never recorded: as good as unknown
            return "send" if retry_unknown else "hold"
        if here:
            return "collect"
        if cell.origin == BUILTIN:
            return "send"  # the built-in server that took it stopped with its run: nothing was billed
        return "elsewhere"
    if cell.cached:
        return "cache"
    if cell.state == "unknown":
        return "send" if retry_unknown or cell.origin == BUILTIN else "hold"
    if cell.state == "lost":
        return "send" if resend_lost else "hold"
    return "send"  # planned, failed, cancelled, or succeeded with its image gone


def after_submit_error(exc: BaseException) -> Next:
    """A submit raised `exc`: was the job possibly created, and must sending stop?"""
    text = str(exc)
    if isinstance(exc, errors.SubmitUnknownError):
        return Next("unknown", "unknown submit outcome", text)
    if isinstance(exc, errors.AuthError):
        return Next("planned", _labelled("token refused", exc), text, stop="token")
    if isinstance(exc, errors.InsufficientBalance):
        return Next("planned", _labelled("no balance", exc), text, stop="balance")
    if isinstance(exc, errors.RateLimitedError):
        return Next("failed", "rate limited", text)
    if isinstance(exc, errors.APIError):
        return Next("failed", _labelled("refused by the service", exc), text)
    if isinstance(exc, errors.TransportError):
        return Next("failed", "could not connect", text)
    if isinstance(exc, errors.ValidationError):
        return Next("failed", f"invalid {exc.field}", text)
    return Next("failed", type(exc).__name__, f"{type(exc).__name__}: {text}")


def after_outcome(phase: Phase, error: object, resends: int) -> Next:
    """A job ended without an image: failed on the server, or cancelled (sent again once in this run)."""
    if phase == "failed":
        message = error.get("message") or error.get("error_message") if isinstance(error, dict) else error
        text = str(message or "").strip()
        first = text.splitlines()[0] if text else ""  # the summary counts cells by this (e.g. a LoRA's refusal)
        reason = first if len(first) <= 160 else first[:159] + "…"
        label = f"job failed on the server: {reason}" if reason else "job failed on the server"
        return Next("failed", label, f"the job failed on the server: {text or error}")
    if resends < MAX_RESENDS_AFTER_CANCEL:
        return Next("planned", "cancelled at the server", "the job was found cancelled at the server; sent again")
    return Next("cancelled", "cancelled at the server", "the job was cancelled at the server")


def after_collect_error(exc: BaseException, attempts: int, *, timed_out_cancelled: bool = False) -> Next:
    """Following or fetching a paid job failed: it stays collectable, until too many tries make it lost."""
    if timed_out_cancelled:
        return Next("cancelled", "timed out in the queue", f"{exc}; cancelled while still queued (not billed)")
    stop: Stop | None = "token" if isinstance(exc, errors.AuthError) and exc.error_code != 403001 else None
    label = _collect_label(exc)
    if isinstance(exc, errors.WaitTimeout | errors.AuthError | errors.RateLimitedError):
        return Next("accepted", label, f"not collected yet: {exc}; a rerun collects it", stop=stop)
    if attempts + 1 >= MAX_COLLECT_ATTEMPTS:
        return Next(
            "lost",
            label,
            f"the job was accepted (and may be billed) but its image could not be collected after "
            f"{attempts + 1} tries: {exc}; zlab will not pay for it again unless asked (--resend-lost)",
            count_attempt=True,
        )
    return Next("accepted", label, f"not collected yet: {exc}; a rerun collects it again", count_attempt=True)


def _collect_label(exc: BaseException) -> str:
    if isinstance(exc, errors.WaitTimeout):
        return "still running at the deadline"
    if isinstance(exc, errors.NotFoundError):
        return "request id not found"
    if isinstance(exc, errors.DownloadError):
        return "image download failed"
    if isinstance(exc, errors.AuthError):
        return _labelled("token refused", exc)
    if isinstance(exc, errors.ZlabError):
        return type(exc).__name__
    return f"local error ({type(exc).__name__})"  # disk full, cache not writable, …: nothing to do with the job


def _labelled(label: str, exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    return f"{label} ({status})" if status else label


def check_budget(estimate_usd: float, budget: float | None, new_images: int) -> None:
    """Refuse to start a run estimated above its budget (a budget must be a finite number >= 0)."""
    if budget is None:
        return
    if not isinstance(budget, int | float) or not math.isfinite(budget) or budget < 0:
        raise errors.ValidationError("budget", budget, "a finite number of USD >= 0")
    if estimate_usd > budget:
        raise errors.BudgetExceeded(
            f"the sweep is estimated at ${estimate_usd:.2f} for {new_images} new images, over the budget of "
            f"${budget:.2f}: shrink the sweep or raise --budget",
            estimate_usd=estimate_usd,
            budget_usd=budget,
        )


def tally_reasons(rows: Iterable[tuple[CellState, str | None]]) -> str:
    """'3 failed: token refused (403) ×2, job failed on the server ×1' for the run summary (cells that were
    refused before the service took them count as "not sent")."""
    names: dict[CellState, str] = {
        "failed": "failed",
        "unknown": "unknown",
        "lost": "lost",
        "cancelled": "cancelled",
        "planned": "not sent",
        "accepted": "pending",
    }
    by_state: dict[CellState, Counter[str]] = {state: Counter() for state in names}
    for state, reason in rows:
        if state in by_state and (reason or state in ("failed", "unknown", "lost")):
            by_state[state][reason or "no reason recorded"] += 1
    parts = []
    for state, reasons in by_state.items():
        if reasons:
            listed = ", ".join(f"{reason} ×{n}" for reason, n in reasons.most_common())
            parts.append(f"{sum(reasons.values())} {names[state]}: {listed}")
    return "; ".join(parts)
