"""The RunComfy wire protocol as pure functions: answers in, typed values (or exceptions) out.

Nothing here does I/O, so every variant the real service may answer (`runcomfy-api.md`, and the
matrix in docs/protocol.md) is tested without a network: two status vocabularies, `"error_code":
null` on success bodies, "not ready" as HTTP 200 or as HTTP 400 with code 400005, queue positions
counted from 0 or 1 or missing, failures on /status or only on /result, outputs in any shape (one
URL, a list, `image`/`images`, objects holding `url`), `canceled` spelled with one L, errors whose
text sits in `error_message`, `message`, `detail` or `error`.

Reading is tolerant by design, because no list of variants is ever complete (runcomfy-api.md,
"Answers no one listed"): status words are compared case-insensitively and a word zlab does not know
is a phase still going (`Status.word` says which, so the run reports it once), never an exception
that would strand a paid job. A job is terminal only on a terminal word, an output, or an explicit
error. Outputs are found wherever they sit (`output`/`outputs`, lists, dicts keyed by node or name,
objects with `url`/`uri`, `data:` URIs). Errors are classified by the code family wherever it sits
(`error_code` or `code`, on any HTTP status, 200 included), and a balance code beats the HTTP status.
"""

from __future__ import annotations

import dataclasses
import email.utils
import math
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from zlab import errors
from zlab.core.status import TERMINAL as TERMINAL  # the vocabulary lives in zlab.core.status; kept importable here
from zlab.core.status import CancelOutcome, Phase, is_finished, is_terminal

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
    "failure": "failed",
    "error": "failed",
    "errored": "failed",
    "cancelled": "cancelled",
    "canceled": "cancelled",
}
# Words that plausibly mean "still going" in other queues (fal, Replicate, RunPod): known, not reported.
_STILL_GOING: frozenset[str] = frozenset(
    {"starting", "started", "submitted", "accepted", "created", "waiting", "scheduled", "booting",
     "in_queue", "inqueue", "in-queue", "in_progress", "inprogress", "in-progress", "executing", "generating"}
)  # fmt: skip
_NOT_READY_WORDS = ("not ready", "not_ready", "not yet", "not finished", "not complete", "still ", "in progress",
                    "in_progress", "in queue", "in_queue", "pending", "processing", "try again later")  # fmt: skip
NOT_READY_CODE = 400005  # "result not ready", seen in RunComfy's own client tests as HTTP 400
MAX_REQUEST_ID = 1024  # ids are opaque: anything printable is recorded as given, up to a sane length
MAX_OUTPUT_URLS = 64
MAX_DEPTH = 10  # outputs nest (node → images → objects); deeper than this is not an output
OUTPUT_KEYS = ("output", "outputs", "result", "results", "data", "images", "image", "files")


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
    word: str | None = None  # a status word zlab does not know (followed as still going), for the summary

    @property
    def terminal(self) -> bool:
        return is_terminal(self.phase)


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
    word: str | None = None  # a status word zlab does not know (followed as still going)
    lagging: bool = False  # the service says it finished but shows no output yet (its result store lags)

    @property
    def finished(self) -> bool:
        return is_finished(self.phase)


@dataclasses.dataclass(frozen=True, slots=True)
class Price:
    """The service's own price for a model (`GET /v1/models/{id}`): USD per `unit`."""

    usd: float
    unit: str  # "image", "output" or "second"
    note: str = ""


def quote_id(request_id: str) -> str:
    """A request id as one path segment that survives every URL normaliser: `/ ? # %` and the rest are
    percent-quoted, and a segment of dots only (`.`, `..`), which HTTP clients collapse as "this/parent
    directory", has its dots quoted too (`%2E`), so the server sees the id as given."""
    quoted = quote(request_id, safe="")
    return quoted.replace(".", "%2E") if set(request_id) == {"."} else quoted


def request_urls(base_url: str, request_id: str) -> tuple[str, str, str]:
    base = f"{base_url.rstrip('/')}/v1/requests/{quote_id(request_id)}"
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
    """The phase a status word names; a word zlab does not know is "running" (see `read_phase`)."""
    return read_phase(raw)[0]


def read_phase(raw: Any) -> tuple[Phase, str | None]:
    """(phase, unknown word): words compare case-insensitively, with `-`/space read as `_`; a word zlab
    does not know (or no word at all) is a phase still going, never terminal, returned for reporting."""
    word = raw.strip().lower().replace("-", "_").replace(" ", "_") if isinstance(raw, str) else None
    if word is not None and word in _PHASES:
        return _PHASES[word], None
    if word is not None and word in _STILL_GOING:
        return "running", None
    return "running", _excerpt_text(str(raw), 60) if raw is not None else "(none)"


def parse_position(raw: Any) -> int | None:
    ok = isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0
    return raw if ok else None


def parse_status(body: Any, request_id: str | None = None) -> Status:
    """/status: the phase (an unknown word is still going, and named in `word`), and the queue position."""
    if not isinstance(body, dict):
        raise errors.ProtocolError(f"a status answer must be a JSON object; got {_excerpt(body)}")
    phase, word = read_phase(_status_word(body))
    if word is not None and (outputs_in(body) or _job_error(body) is not None):
        phase, word = ("completed" if outputs_in(body) else "failed"), None  # an output or an error ends it
    return Status(phase, parse_position(body.get("queue_position")) if phase == "queued" else None, word)


def parse_outcome(body: Any, request_id: str | None = None) -> Outcome:
    """Parse /result: succeeded with outputs, failed with an error, cancelled, or still unfinished.

    Terminal only on a terminal word, an output or an explicit error. A finished word with no output
    yet is `lagging` (the result store may trail /status): still going, followed within bounds."""
    if not isinstance(body, dict):
        raise errors.ProtocolError(f"a result answer must be a JSON object; got {_excerpt(body)}")
    phase, word = read_phase(_status_word(body))
    created, finished = parse_time(body.get("created_at")), parse_time(body.get("finished_at"))
    backend = body.get("backend") if isinstance(body.get("backend"), dict) else None
    outputs = outputs_in(body)
    job_error = _job_error(body)
    if word is not None:  # a word zlab does not know: an output or an explicit error still ends the job
        if outputs:
            phase, word = "succeeded", None
        elif job_error is not None:
            phase, word = "failed", None
    cost = parse_cost(body.get("cost"))
    if phase in ("succeeded", "completed"):
        if not outputs and any(_holds_something(body.get(key)) for key in OUTPUT_KEYS):
            raise errors.ProtocolError(
                f"request {request_id} finished but its result holds no http(s) URL or data: URI: "
                f"{_excerpt(body.get('output', body))}"
            )
        if not outputs:  # nothing there yet: the result store may trail /status (followed, bounded)
            return Outcome("running", created_at=created, finished_at=finished, lagging=True)
        return Outcome("succeeded", outputs, None, created, finished, cost, backend)
    if phase in ("queued", "running"):
        position = parse_position(body.get("queue_position")) if phase == "queued" else None
        return Outcome(phase, created_at=created, finished_at=finished, queue_position=position, word=word)
    error = (job_error or "no reason given") if phase == "failed" else None
    return Outcome(phase, (), error, created, finished, cost)


def _holds_something(value: Any) -> bool:
    """Whether an output field holds any text at all (an empty dict, list or string is "not yet")."""
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, dict):
        return any(_holds_something(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_something(v) for v in value)
    return False


def _status_word(body: dict[str, Any]) -> Any:
    for key in ("status", "state", "phase"):
        if key in body:
            return body[key]
    return None


def _job_error(body: dict[str, Any]) -> Any:
    """A job's own failure reason (`error`, else `error_message`), or None when the body names none."""
    for key in ("error", "error_message"):
        value = body.get(key)
        if value not in (None, "", [], {}, 0, False):
            return value
    return None


def outputs_in(body: dict[str, Any]) -> tuple[str, ...]:
    """Every image a result body holds, under any of the keys services put outputs in."""
    found: list[str] = []
    for key in OUTPUT_KEYS:
        for url in output_urls(body.get(key)):
            if url not in found:
                found.append(url)
    return tuple(found[:MAX_OUTPUT_URLS])


def not_ready(request_id: str) -> Outcome:
    """/result's "not ready yet" when a service says it as an error (HTTP 400, code 400005, or a `detail`)."""
    return Outcome("running")


def output_urls(output: Any) -> tuple[str, ...]:
    """Every image location in `output`, in order, without repeats: http(s) URLs and `data:image` URIs, as
    a bare string, in lists, in dicts keyed by node or name (`image`, `images`, `"9": {...}`), or in
    objects holding `url`/`uri`/`href` beside `filename`/`content_type`."""
    found: list[str] = []

    def walk(value: Any, depth: int) -> None:
        if len(found) >= MAX_OUTPUT_URLS or depth > MAX_DEPTH:
            return
        if isinstance(value, str):
            text = value.strip()
            lower = text[:16].lower()
            if (lower.startswith(("http://", "https://")) or lower.startswith("data:image/")) and text not in found:
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
    # Zero, negative or in the past says nothing usable: zlab's own backoff decides (a storm of instant
    # retries would spend every attempt at once).
    return seconds if math.isfinite(seconds) and seconds > 0 else None


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


def error_code(body: Any) -> int | None:
    """The body's error code, from `error_code` or `code` (an int or digits), or None when it carries no
    real one: success bodies may say `null`, `0` or `""`, and only a non-zero code is an error."""
    if not isinstance(body, dict):
        return None
    for key in ("error_code", "code"):
        raw = body.get(key)
        if isinstance(raw, bool):
            continue
        if isinstance(raw, str) and raw.strip().isdigit() and len(raw.strip()) <= 12:
            raw = int(raw.strip())
        if isinstance(raw, int) and raw != 0 and abs(raw) < 10**12:
            return raw
    return None


def is_error(status_code: int, body: Any) -> bool:
    """An answer is an error when its HTTP status says so, or its body carries a real error code
    (success bodies may carry `"error_code": null`, `0` or `""`)."""
    return status_code >= 400 or error_code(body) is not None


def says_not_ready(status_code: int, body: Any) -> bool:
    """A "not ready yet" in any spelling: code 400005, or an error text (e.g. only a `detail`) saying so."""
    if error_code(body) == NOT_READY_CODE:
        return True
    if status_code >= 500 or status_code in (401, 402, 403, 429):
        return False
    text = (error_text(body) or "").lower()
    return any(words in text for words in _NOT_READY_WORDS)


def _family(code: int | None) -> int | None:
    """400002 → 400, 429 → 429: the HTTP-like family of a code."""
    if code is None:
        return None
    return code // 1000 if code >= 100000 else code if 100 <= code < 600 else None


def error_from_answer(
    status_code: int, body: Any, *, request_id: str | None = None, retry_after: str | None = None
) -> errors.APIError | None:
    """The exception an answer stands for, or None when it is a success.

    The code decides wherever it sits (`error_code` or `code`, on any HTTP status, 200 included), then
    the HTTP status: 429 rate limited; 400002/402 no balance (a balance code beats a 401/403 beside it);
    400005 or a "not ready" text not ready; 403001 another user's job; 400004/401/403 refused token;
    404001/400001/404 not found; 422 rejected input; 5xx / 5xxxxx the service failed.
    """
    if not is_error(status_code, body):
        return None
    code = error_code(body)
    family = _family(code)
    text = error_text(body)
    if text is None and body is None:
        text = f"the service answered HTTP {status_code} with no JSON (a proxy or load balancer page?)"
    message = _excerpt_text(text or f"the service answered HTTP {status_code}")
    detail = body.get("detail") if isinstance(body, dict) else None
    kw: dict[str, Any] = dict(status_code=status_code, error_code=code, request_id=request_id, detail=detail)
    where = f" for request {request_id}" if request_id else ""
    if status_code == 429 or family == 429:
        return errors.RateLimitedError(
            f"rate limited{where}: {message}; zlab waits and retries",
            retry_after=parse_retry_after(retry_after),
            **kw,
        )
    if code == 400002 or family == 402 or (status_code == 402 and code in (None, 402)):
        return errors.InsufficientBalance(f"the account has no balance left ({message}); top it up on RunComfy", **kw)
    if code == NOT_READY_CODE or (request_id is not None and says_not_ready(status_code, body)):
        return errors.NotReady(f"the result{where} is not ready yet", **kw)
    if code == 403001:
        return errors.AuthError(
            f"{message}: request{where} belongs to another account; use the token that submitted it", **kw
        )
    if status_code in (401, 403) or code == 400004 or family in (401, 403):
        return errors.AuthError(
            f"the token was refused ({message}): it is missing, wrong, expired or revoked; "
            "set RUNCOMFY_TOKEN to a valid key",
            **kw,
        )
    if status_code == 402:
        return errors.InsufficientBalance(f"the account has no balance left ({message}); top it up on RunComfy", **kw)
    if status_code == 404 or code in (400001, 404001) or family == 404:
        hint = "the request id is unknown, deleted or expired" if request_id else "check the model id"
        return errors.NotFoundError(f"{message}{where}: {hint}", **kw)
    if status_code == 422 or family == 422:
        return errors.APIError(f"the service rejected the input: {message} {_excerpt(detail)}", **kw)
    if status_code >= 500 or (family is not None and family >= 500):
        return errors.ServerError(f"the service failed{where}: {message}; try again later", **kw)
    return errors.APIError(f"{message}{where}", **kw)


def failed_result(status_code: int, body: Any) -> Outcome | None:
    """A failed job that a service reports only as an HTTP error on /result (a 422, or a 5xx whose JSON
    names the job's failure rather than a service fault): `failed`, with its reason, at once.

    A 5xx that carries a 5xxxxx code, or no JSON at all, is the service's own trouble: None (retried)."""
    if not isinstance(body, dict) or status_code < 400 or status_code in (401, 402, 403, 404, 429):
        return None
    phase, _ = read_phase(_status_word(body))
    code = error_code(body)
    if phase == "failed" and _status_word(body) is not None:
        return Outcome("failed", error=_job_error(body) or error_text(body) or f"HTTP {status_code}")
    if status_code == 422 or _family(code) == 422:
        return Outcome("failed", error=error_text(body) or body.get("detail") or f"HTTP {status_code}")
    text = error_text(body)
    if status_code == 500 and code is None and text is not None and "internal server error" not in text.lower():
        return Outcome("failed", error=text)
    return None


def _excerpt(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _excerpt_text(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
