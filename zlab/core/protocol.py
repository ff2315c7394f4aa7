"""The RunComfy wire protocol as pure functions: answers in, typed values (or exceptions) out.

Nothing here does I/O, so every variant the real service may answer (`runcomfy-api.md`, and the
matrix in docs/protocol.md) is tested without a network: two status vocabularies, `"error_code":
null` on success bodies, "not ready" as HTTP 200 or as HTTP 400 with code 400005, queue positions
counted from 0 or 1 or missing, failures on /status or only on /result, outputs in any shape (one
URL, a list, `image`/`images`, objects holding `url`), `canceled` spelled with one L, errors whose
text sits in `error_message`, `message`, `detail` or `error`. An unknown status is an error, never
"keep waiting".
"""

from __future__ import annotations

import dataclasses
import email.utils
import math
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

from zlab import errors

Phase = Literal["queued", "running", "completed", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "succeeded", "failed", "cancelled"})
CancelOutcome = Literal["cancelled", "not_cancellable", "unknown"]

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
NOT_READY_CODE = 400005  # "result not ready", seen in RunComfy's own client tests as HTTP 400
MAX_REQUEST_ID = 1024  # ids are opaque: anything printable is recorded as given, up to a sane length
MAX_OUTPUT_URLS = 64


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
    queue_position: int | None = None  # as the service counts it (0- or 1-based): the poller learns which

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
    cost_usd: float | None = None  # the service's own figure (`?include_cost=true`), when it gives one
    backend: dict[str, Any] | None = None  # a local server's facts about how it rendered (model, versions, …)
    queue_position: int | None = None

    @property
    def finished(self) -> bool:
        return self.phase in ("succeeded", "failed", "cancelled")


@dataclasses.dataclass(frozen=True, slots=True)
class Price:
    """The service's own price for a model (`GET /v1/models/{id}`): USD per `unit`."""

    usd: float
    unit: str  # "image", "output" or "second"
    note: str = ""


def request_urls(base_url: str, request_id: str) -> tuple[str, str, str]:
    base = f"{base_url.rstrip('/')}/v1/requests/{quote(request_id, safe='')}"
    return f"{base}/status", f"{base}/result", f"{base}/cancel"


def check_request_id(request_id: Any) -> str:
    """An id is opaque: record whatever the service gave (a number becomes text); refuse only what
    cannot name a job at all (nothing, or something that is not a scalar)."""
    if isinstance(request_id, int) and not isinstance(request_id, bool):
        request_id = str(request_id)
    if not isinstance(request_id, str) or not request_id.strip() or len(request_id) > MAX_REQUEST_ID:
        raise errors.ProtocolError(f"the service returned an unusable request id {_excerpt(request_id)}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in request_id):
        raise errors.ProtocolError(f"the service returned a request id with control characters {_excerpt(request_id)}")
    return request_id


def parse_submitted(body: Any, base_url: str) -> Submitted:
    """Only `request_id` is certain; the URLs are always rebuilt from the base URL and the quoted id,
    so a job is asked about where zlab was told to talk (never at a host a body names)."""
    if not isinstance(body, dict) or "request_id" not in body:
        raise errors.ProtocolError(f"a submit answer must carry a request_id; got {_excerpt(body)}")
    request_id = check_request_id(body["request_id"])
    return Submitted(request_id, *request_urls(base_url, request_id))


def parse_phase(raw: Any, request_id: str | None = None) -> Phase:
    phase = _PHASES.get(raw.strip().lower()) if isinstance(raw, str) else None
    if phase is None:
        raise errors.ProtocolError(
            f"unknown job status {_excerpt(raw)} for request {request_id}: zlab stops rather than wait forever; "
            "upgrade zlab or report this status",
        )
    return phase


def parse_position(raw: Any) -> int | None:
    ok = isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0
    return raw if ok else None


def parse_status(body: Any, request_id: str | None = None) -> Status:
    if not isinstance(body, dict) or "status" not in body:
        raise errors.ProtocolError(f"a status answer must carry a status; got {_excerpt(body)}")
    phase = parse_phase(body["status"], request_id)
    return Status(phase, parse_position(body.get("queue_position")) if phase == "queued" else None)


def parse_outcome(body: Any, request_id: str | None = None) -> Outcome:
    """Parse /result: succeeded with outputs, failed with an error, cancelled, or still unfinished."""
    if not isinstance(body, dict) or "status" not in body:
        raise errors.ProtocolError(f"a result answer must carry a status; got {_excerpt(body)}")
    phase = parse_phase(body["status"], request_id)
    created, finished = parse_time(body.get("created_at")), parse_time(body.get("finished_at"))
    backend = body.get("backend") if isinstance(body.get("backend"), dict) else None
    if phase in ("succeeded", "completed"):
        outputs = output_urls(body.get("output"))
        if not outputs:
            raise errors.ProtocolError(
                f"request {request_id} finished but its result holds no http(s) URL: {_excerpt(body.get('output'))}"
            )
        return Outcome("succeeded", outputs, None, created, finished, parse_cost(body.get("cost")), backend)
    if phase in ("queued", "running"):
        position = parse_position(body.get("queue_position")) if phase == "queued" else None
        return Outcome(phase, created_at=created, finished_at=finished, queue_position=position)
    error = (body.get("error") or body.get("error_message") or "no reason given") if phase == "failed" else None
    return Outcome(phase, (), error, created, finished, parse_cost(body.get("cost")))


def not_ready(request_id: str) -> Outcome:
    """/result's "not ready yet" when a service says it as an error (HTTP 400, code 400005)."""
    return Outcome("running")


def output_urls(output: Any) -> tuple[str, ...]:
    """Every http(s) URL in `output`, in order, without repeats: a bare string, a list, `image`,
    `images`, `video`, objects holding `url`: the docs and RunComfy's clients show all of these."""
    found: list[str] = []

    def walk(value: Any, depth: int) -> None:
        if len(found) >= MAX_OUTPUT_URLS or depth > 6:
            return
        if isinstance(value, str):
            text = value.strip()
            if text.lower().startswith(("http://", "https://")) and text not in found:
                found.append(text)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item, depth + 1)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, depth + 1)

    walk(output, 0)
    return tuple(found)


def parse_cost(raw: Any) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        cost = float(raw)
    except ValueError:
        return None
    return cost if math.isfinite(cost) and cost >= 0 else None


def parse_price(body: Any) -> Price | None:
    """`GET /v1/models/{id}` → its price, or None when the answer carries none zlab can use."""
    if not isinstance(body, dict):
        return None
    usd = parse_cost(body.get("base_price_usd"))
    unit = body.get("price_unit")
    if usd is None or not isinstance(unit, str) or unit.lower() not in ("image", "output", "second"):
        return None
    note = body.get("pricing_note")
    return Price(usd, unit.lower(), note if isinstance(note, str) else "")


def parse_cancel(body: Any) -> CancelOutcome:
    """`cancelled` (either spelling), `not_cancellable`, or `unknown` (e.g. a 202 with an empty body):
    the caller then asks /status, which always knows."""
    if not isinstance(body, dict):
        return "unknown"
    for key in ("outcome", "status"):
        value = body.get(key)
        if isinstance(value, str):
            word = value.strip().lower()
            if word in ("cancelled", "canceled"):
                return "cancelled"
            if word in ("not_cancellable", "not_cancelable", "not-cancellable"):
                return "not_cancellable"
    return "unknown"


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


def error_text(body: Any) -> str | None:
    """The human text of an error body, wherever this deployment put it."""
    if isinstance(body, dict):
        for key in ("error_message", "message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
            if isinstance(value, dict | list) and value:
                return _excerpt(value)
    return None


def is_error(status_code: int, body: Any) -> bool:
    """An answer is an error when its HTTP status says so, or its body carries a non-null `error_code`
    (success bodies may carry `"error_code": null`)."""
    return status_code >= 400 or (isinstance(body, dict) and body.get("error_code") is not None)


def error_from_answer(
    status_code: int, body: Any, *, request_id: str | None = None, retry_after: str | None = None
) -> errors.APIError | None:
    """The exception an answer stands for, or None when it is a success.

    Classified by HTTP status and by `error_code` family: 400004/401/403 refused token, 400002/402 no
    balance, 404001/400001/404 not found, 400005 not ready, 422 rejected input, 5xx / 5xxxxx service.
    """
    if not is_error(status_code, body):
        return None
    raw_code = body.get("error_code") if isinstance(body, dict) else None
    code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
    if code is None and isinstance(raw_code, str) and raw_code.strip().isdigit():
        code = int(raw_code)
    text = error_text(body)
    if text is None and body is None:
        text = f"the service answered HTTP {status_code} with no JSON (a proxy or load balancer page?)"
    message = _excerpt_text(text or f"the service answered HTTP {status_code}")
    detail = body.get("detail") if isinstance(body, dict) else None
    kw: dict[str, Any] = dict(status_code=status_code, error_code=code, request_id=request_id, detail=detail)
    where = f" for request {request_id}" if request_id else ""
    family = code // 1000 if code is not None and code >= 100000 else None
    if status_code == 429 or code == 429:
        return errors.RateLimitedError(
            f"rate limited{where}: {message}; zlab waits and retries",
            retry_after=parse_retry_after(retry_after),
            **kw,
        )
    if code == NOT_READY_CODE:
        return errors.NotReady(f"the result{where} is not ready yet", **kw)
    if code == 403001:
        return errors.AuthError(
            f"{message}: request{where} belongs to another account; use the token that submitted it", **kw
        )
    if status_code in (401, 403) or code == 400004:
        return errors.AuthError(
            f"the token was refused ({message}): it is missing, wrong, expired or revoked; "
            "set RUNCOMFY_TOKEN to a valid key",
            **kw,
        )
    if status_code == 402 or code == 400002:
        return errors.InsufficientBalance(f"the account has no balance left ({message}); top it up on RunComfy", **kw)
    if status_code == 404 or code in (400001, 404001):
        hint = "the request id is unknown, deleted or expired" if request_id else "check the model id"
        return errors.NotFoundError(f"{message}{where}: {hint}", **kw)
    if status_code == 422 or family == 422:
        return errors.APIError(f"the service rejected the input: {message} {_excerpt(detail)}", **kw)
    if status_code >= 500 or (family is not None and family >= 500):
        return errors.ServerError(f"the service failed{where}: {message}; try again later", **kw)
    return errors.APIError(f"{message}{where}", **kw)


def _excerpt(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _excerpt_text(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
