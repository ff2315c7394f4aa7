"""The RunComfy wire protocol as pure functions: answers in, typed values (or exceptions) out.

Nothing here does I/O, so every quirk of the protocol is tested without a network:
two status vocabularies (`completed` on /status, `succeeded` on /result), failures visible only
on /result, `error_code` bodies that arrive with HTTP 200, outputs under `image`/`images`/…,
and URLs the server may leave out. An unknown status is an error, never "keep waiting".
"""

from __future__ import annotations

import dataclasses
import email.utils
import math
import re
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

from zlab import errors

Phase = Literal["queued", "running", "completed", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "succeeded", "failed", "cancelled"})

# Both vocabularies, plus spellings another deployment may plausibly use.
_PHASES: dict[str, Phase] = {
    "in_queue": "queued",
    "queued": "queued",
    "pending": "queued",
    "in_progress": "running",
    "running": "running",
    "processing": "running",
    "completed": "completed",
    "succeeded": "succeeded",
    "success": "succeeded",
    "failed": "failed",
    "error": "failed",
    "cancelled": "cancelled",
    "canceled": "cancelled",
}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_OUTPUT_KEYS = ("image", "images", "video", "videos")


@dataclasses.dataclass(frozen=True, slots=True)
class Submitted:
    """The answer to a submit: the request id, and where to ask about it."""

    request_id: str
    status_url: str
    result_url: str
    cancel_url: str


@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    """A job's state as /status (or an unfinished /result) reports it."""

    phase: Phase
    queue_position: int | None = None

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What /result says: a phase, and for a finished job its outputs or its error."""

    phase: Phase
    outputs: tuple[str, ...] = ()
    error: Any = None
    created_at: datetime | None = None
    finished_at: datetime | None = None


def request_urls(base_url: str, request_id: str) -> tuple[str, str, str]:
    base = f"{base_url.rstrip('/')}/v1/requests/{quote(request_id, safe='')}"
    return f"{base}/status", f"{base}/result", f"{base}/cancel"


def check_request_id(request_id: Any) -> str:
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise errors.ProtocolError(f"the service returned a malformed request id {request_id!r}")
    return request_id


def parse_submitted(body: Any, base_url: str) -> Submitted:
    """Only `request_id` is certain; missing URLs are rebuilt from the base URL."""
    if not isinstance(body, dict) or "request_id" not in body:
        raise errors.ProtocolError(f"a submit answer must carry a request_id; got {_excerpt(body)}")
    request_id = check_request_id(body["request_id"])
    status_url, result_url, cancel_url = request_urls(base_url, request_id)
    return Submitted(
        request_id,
        body.get("status_url") or status_url,
        body.get("result_url") or result_url,
        body.get("cancel_url") or cancel_url,
    )


def parse_phase(raw: Any, request_id: str | None = None) -> Phase:
    phase = _PHASES.get(raw.lower()) if isinstance(raw, str) else None
    if phase is None:
        raise errors.ProtocolError(
            f"unknown job status {raw!r} for request {request_id}: zlab stops rather than wait forever; "
            "upgrade zlab or report this status",
        )
    return phase


def parse_status(body: Any, request_id: str | None = None) -> Status:
    if not isinstance(body, dict) or "status" not in body:
        raise errors.ProtocolError(f"a status answer must carry a status; got {_excerpt(body)}")
    phase = parse_phase(body["status"], request_id)
    position = body.get("queue_position")
    ok_position = isinstance(position, int) and not isinstance(position, bool) and position >= 0
    return Status(phase, position if phase == "queued" and ok_position else None)


def parse_outcome(body: Any, request_id: str | None = None) -> Outcome:
    """Parse /result: succeeded with outputs, failed with an error, cancelled, or still unfinished."""
    if not isinstance(body, dict) or "status" not in body:
        raise errors.ProtocolError(f"a result answer must carry a status; got {_excerpt(body)}")
    phase = parse_phase(body["status"], request_id)
    times = {k: parse_time(body.get(k)) for k in ("created_at", "finished_at")}
    if phase in ("succeeded", "completed"):
        outputs = output_urls(body.get("output"))
        if not outputs:
            raise errors.ProtocolError(f"request {request_id} succeeded but its result has no output URL")
        return Outcome("succeeded", outputs, None, **times)
    return Outcome(phase, (), body.get("error") if phase == "failed" else None, **times)


def output_urls(output: Any) -> tuple[str, ...]:
    """Outputs follow the model's output schema: `image`, `images`, `video` or `videos`."""
    if not isinstance(output, dict):
        return ()
    urls: list[str] = []
    for key in _OUTPUT_KEYS:
        value = output.get(key)
        urls.extend([value] if isinstance(value, str) else [v for v in value or () if isinstance(v, str)])
    return tuple(urls)


def parse_time(raw: Any) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_retry_after(raw: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None when absent or garbled."""
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def error_from_answer(
    status_code: int, body: Any, *, request_id: str | None = None, retry_after: str | None = None
) -> errors.APIError | None:
    """The exception an answer stands for, or None when it is a success.

    Any body carrying `error_code` is an error, even with HTTP 200 (some RunComfy APIs do that).
    """
    has_code = isinstance(body, dict) and "error_code" in body
    if status_code < 400 and not has_code:
        return None
    code = body.get("error_code") if has_code else None
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    text = body.get("error_message") if isinstance(body, dict) else None
    detail = body.get("detail") if isinstance(body, dict) else None
    message = str(text or f"the service answered HTTP {status_code}")
    kw: dict[str, Any] = dict(status_code=status_code, error_code=code, request_id=request_id, detail=detail)
    where = f" for request {request_id}" if request_id else ""
    if status_code == 429:
        return errors.RateLimitedError(
            f"rate limited{where}: {message}; zlab waits and retries",
            retry_after=parse_retry_after(retry_after),
            **kw,
        )
    if status_code == 401 or code == 400004:
        return errors.AuthError(
            f"{message}: the token is missing, wrong, expired or revoked; set RUNCOMFY_TOKEN to a valid key", **kw
        )
    if status_code == 403 or code == 403001:
        return errors.AuthError(f"{message}: request{where} belongs to another account's token", **kw)
    if status_code == 402 or code == 400002:
        return errors.InsufficientBalance(f"{message}: the account has no balance; top it up on RunComfy", **kw)
    if status_code == 404 or code in (400001, 404001):
        hint = "the request id is unknown, deleted or expired" if request_id else "check the model id"
        return errors.NotFoundError(f"{message}{where}: {hint}", **kw)
    if status_code == 422:
        return errors.APIError(f"the service rejected the input: {message} {_excerpt(detail)}", **kw)
    if status_code >= 500:
        return errors.ServerError(f"the service failed{where}: {message}; try again later", **kw)
    return errors.APIError(f"{message}{where}", **kw)


def _excerpt(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
