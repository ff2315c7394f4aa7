"""zlab's exceptions: one root, and subclasses that carry what a user needs to act.

    ZlabError                      everything zlab raises on purpose
    ├── ValidationError            bad input, caught before any network call (.field, .value, .allowed)
    ├── ConfigError                missing token, bad base URL, bad setting
    │   └── RunDirBusy             another process is writing the run directory (.holder)
    ├── APIError                   the service answered with an error (.status_code, .error_code, .request_id)
    │   ├── AuthError              401/403, error_code 400004 / 403001
    │   ├── NotFoundError          404, error_code 400001 / 404001 (unknown, deleted or expired id)
    │   ├── InsufficientBalance    402, error_code 400002
    │   ├── RateLimitedError       429 (.retry_after)
    │   ├── NotReady               /result before the job is done, said as an error (400005)
    │   └── ServerError            5xx
    ├── TransportError             the connection failed (refused, dropped, timed out)
    │   └── SubmitUnknownError     a submit may or may not have been accepted: never resent silently
    ├── ProtocolError              an answer zlab cannot interpret (e.g. an unknown status)
    ├── JobFailed                  the job ran and failed on the server (.request_id, .detail)
    ├── JobCancelled               the job was cancelled
    ├── WaitTimeout                a deadline passed while waiting (.request_id; the job may still finish)
    ├── DownloadError              an output file could not be fetched or is not a valid image
    └── BudgetExceeded             a sweep's estimate is above its budget; nothing was sent

Messages never contain the API token: it is never passed to an exception in the first place.
Values quoted in messages are cut short, so no input (a YAML alias bomb, say) makes a huge message.
"""

from __future__ import annotations

import copy as _copy
from typing import Any, Self


class ZlabError(Exception):
    """Root of every error zlab raises on purpose."""

    def extended(self, advice: str) -> Self:
        """A copy of this error whose message ends with `advice` (what to do next), every attribute kept
        (`url`, `transient`, `status_code`, …), so a caller that adds advice never loses what it knew."""
        copy = _copy.copy(self)
        copy.args = (f"{self}. {advice}",)
        return copy


class ValidationError(ZlabError, ValueError):
    """An input is outside what the model accepts; raised before anything is sent."""

    def __init__(self, field: str, value: Any, allowed: str, hint: str = "") -> None:
        self.field, self.value, self.allowed = field, value, allowed
        message = f"{field}: {short_repr(value)} is not allowed; expected {allowed}"
        super().__init__(f"{message}. {hint}" if hint else message)


class ConfigError(ZlabError):
    """zlab is not set up to do what was asked (token, base URL, settings)."""


class RunDirBusy(ConfigError):
    """Another process is writing this run directory; `holder` says which (pid, host, command, since)."""

    def __init__(self, message: str, *, holder: str = "") -> None:
        self.holder = holder
        super().__init__(message)


class APIError(ZlabError):
    """The API answered with an error."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_code: int | None = None,
        request_id: str | None = None,
        detail: Any = None,
    ) -> None:
        self.status_code, self.error_code = status_code, error_code
        self.request_id, self.detail = request_id, detail
        parts = [f"HTTP {status_code}" if status_code else None, f"error_code {error_code}" if error_code else None]
        where = ", ".join(p for p in parts if p)
        super().__init__(f"{message} ({where})" if where else message)


class AuthError(APIError):
    """The token is missing, wrong, expired, or the request belongs to another user."""


class NotFoundError(APIError):
    """Unknown model id, or an unknown, deleted or expired request id."""


class InsufficientBalance(APIError):
    """The account has no balance left."""


class RateLimitedError(APIError):
    """Too many requests; `retry_after` is the server's requested pause in seconds, if it gave one."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)


class NotReady(APIError):
    """/result was asked before the job finished and the service said so as an error (code 400005)."""


class ServerError(APIError):
    """The service failed (5xx)."""


class TransportError(ZlabError):
    """The connection failed before an answer arrived."""


class SubmitUnknownError(TransportError):
    """A submit was sent but no answer came back: it may have been accepted (and billed).

    zlab never resends such a submit on its own. A sweep records the cell as `unknown` so a rerun
    can decide; check your RunComfy dashboard before resubmitting by hand.
    """


class ProtocolError(ZlabError):
    """The service answered something zlab cannot interpret."""


class JobFailed(ZlabError):
    """The job ran and failed on the server."""

    def __init__(self, message: str, *, request_id: str | None = None, detail: Any = None) -> None:
        self.request_id, self.detail = request_id, detail
        super().__init__(message)


class JobCancelled(ZlabError):
    """The job was cancelled before it produced an output."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        self.request_id = request_id
        super().__init__(message)


class WaitTimeout(ZlabError, TimeoutError):
    """A deadline passed while waiting; the job itself may still finish and can be collected later."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        self.request_id = request_id
        super().__init__(message)


class DownloadError(ZlabError):
    """An output file could not be downloaded, or what arrived is not the expected image."""

    def __init__(self, message: str, *, url: str | None = None, transient: bool = False) -> None:
        self.url = url
        self.transient = transient  # True: fetching again later may work (the job's result is still paid for)
        super().__init__(message)


class BudgetExceeded(ZlabError):
    """A sweep's estimated cost is above the budget it was given; nothing was sent."""

    def __init__(self, message: str, *, estimate_usd: float, budget_usd: float) -> None:
        self.estimate_usd, self.budget_usd = estimate_usd, budget_usd
        super().__init__(message)


def short_repr(value: Any, limit: int = 120) -> str:
    """A repr bounded in depth, items and length: messages stay small whatever they quote (even a
    structure of a million shared references, which a plain repr would spell out in full)."""
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxlevel, shortener.maxlist, shortener.maxdict, shortener.maxtuple = 3, 8, 8, 8
    shortener.maxstring, shortener.maxother = limit, limit
    try:
        text = shortener.repr(value)
    except Exception:  # a value whose repr fails must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"
