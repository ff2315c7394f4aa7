"""Protocol variants the local server can speak: every answer `runcomfy-api.md` says the real service may give.

RunComfy's docs, its clients and their tests disagree on details (is an unfinished /result a 200
or a 400? is `queue_position` 0- or 1-based? `succeeded` or `completed`?). A client must cope with
all of them, so the server can be switched into each variant by name, and tests prove the client
copes. `Quirks.parse` reads names as given to `LocalServer(quirks=[...])`, `set_quirks(...)` and
`zlab serve --quirk NAME[=VALUE]`; the functions below are pure decisions the app applies.

>>> q = Quirks.parse(["position_1based", "output_list", "html_503=0.2"])
>>> position_field(q, "in_queue", 0), output_value(q, "http://h/f.png"), q.html_503
({'queue_position': 1}, ['http://h/f.png'], 0.2)

Names (VALUE after `=` where it takes one):

    not_ready_400              /result before the job is done: 400 {"error_code": 400005, ...}
    position_1based | position_missing | position_null     queue_position from 1 / absent / null
    completed_result           /result says "completed" instead of "succeeded"
    null_error_code            every success body carries "error_code": null, "error_message": null
    output_images | output_string | output_list | output_objects   the shape of /result's `output`
    redirect_files             output URLs on a second host name that redirect (302, two hops) to the file
    jpeg_output | webp_output  files encoded as JPEG / WebP (default PNG)
    generic_content_type       files served as `binary/octet-stream`
    snap16 | snap32            any size accepted, rendered floored to a multiple of 16 / 32
    submit_5xx_after_accept=P  with probability P (default 1/3) the job is created, then the submit
                               answers a gateway error: 502 HTML, 504 JSON, 500 JSON in turn
    status_failed              /status says "failed" with "error": "Model run failed"; /result's
                               `error` is a plain string
    cancel_canceled            "canceled" (one L) wherever a cancelled job's status or outcome shows
    cancel_empty               cancel answers 202 with an empty body
    auth_403_message           a refused token answers 403 {"message": ...} (no error_code)
    balance_after=N            after N accepted jobs, every submit answers 402 / 400002
    html_503=P                 with probability P (default 0.1) a call answers 503 with an HTML page
    rate_limit=P | rate_limit_bare=P   429 with / without Retry-After (default P 0.1)
    other_users=LOAD           other users' jobs share the queue at LOAD × capacity (default 0.5)
    price=USD                  the model's price per image on GET /v1/models/{id}, and `cost` on
                               /result?include_cost=true (default 0.01; without it both are absent)
    seed=N                     seeds the quirks' own dice (default 0)
    strict                     the hardest plausible combination (see `STRICT`); a correct client
                               still finishes a sweep under it

Names apply in order, so a later one overrides an earlier one (`strict`, then `position_1based`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any, Literal, get_args

from zlab.errors import ConfigError
from zlab.server.faults import ENDPOINTS, Endpoint

PositionStyle = Literal["0based", "1based", "missing", "null"]
OutputShape = Literal["image", "images", "string", "list", "objects"]
FileFormat = Literal["png", "jpeg", "webp"]
QuirkCall = Literal["html_503", "rate_limited", "rate_limited_bare"]

_FLAGS: dict[str, dict[str, Any]] = {  # quirks without a value: the settings each one switches on
    "not_ready_400": {"not_ready_400": True},
    "position_1based": {"position": "1based"},
    "position_missing": {"position": "missing"},
    "position_null": {"position": "null"},
    "completed_result": {"completed_result": True},
    "null_error_code": {"null_error_code": True},
    "output_images": {"output": "images"},
    "output_string": {"output": "string"},
    "output_list": {"output": "list"},
    "output_objects": {"output": "objects"},
    "redirect_files": {"redirect_files": True},
    "jpeg_output": {"file_format": "jpeg"},
    "webp_output": {"file_format": "webp"},
    "generic_content_type": {"generic_content_type": True},
    "snap16": {"snap": 16},
    "snap32": {"snap": 32},
    "status_failed": {"status_failed": True},
    "cancel_canceled": {"cancel_canceled": True},
    "cancel_empty": {"cancel_empty": True},
    "auth_403_message": {"auth_403_message": True},
}
_VALUED: dict[str, tuple[str, type, float | int | None]] = {  # name → (field, type, default; None: required)
    "submit_5xx_after_accept": ("submit_5xx_after_accept", float, 1 / 3),
    "balance_after": ("balance_after", int, None),
    "html_503": ("html_503", float, 0.1),
    "rate_limit": ("rate_limit", float, 0.1),
    "rate_limit_bare": ("rate_limit_bare", float, 0.1),
    "other_users": ("other_users", float, 0.5),
    "price": ("price", float, 0.01),
    "seed": ("seed", int, 0),
}
STRICT: tuple[str, ...] = (
    "not_ready_400",
    "position_null",
    "completed_result",
    "null_error_code",
    "output_objects",
    "redirect_files",
    "webp_output",
    "generic_content_type",
    "snap32",
    "status_failed",
    "cancel_canceled",
    "auth_403_message",
    "rate_limit_bare=0.05",
    "other_users=0.5",
)
"""What `strict` switches on, plus 503 HTML pages on 5% of polls (never on a submit: a correct client
must treat a 503 on submit as an unknown outcome and stop resending, so the sweep could not finish)."""
QUIRK_NAMES: tuple[str, ...] = (*_FLAGS, *_VALUED, "strict")


@dataclasses.dataclass(frozen=True)
class Quirks:
    """The protocol variants in force; all off by default (the docs' variant). Build with `Quirks.parse`."""

    not_ready_400: bool = False
    position: PositionStyle = "0based"
    completed_result: bool = False
    null_error_code: bool = False
    output: OutputShape = "image"
    redirect_files: bool = False
    file_format: FileFormat = "png"
    generic_content_type: bool = False
    snap: int = 1
    submit_5xx_after_accept: float = 0.0
    status_failed: bool = False
    cancel_canceled: bool = False
    cancel_empty: bool = False
    auth_403_message: bool = False
    balance_after: int | None = None
    html_503: float = 0.0
    html_503_endpoints: tuple[Endpoint, ...] = ENDPOINTS
    rate_limit: float = 0.0
    rate_limit_bare: float = 0.0
    other_users: float = 0.0
    price: float | None = None  # USD per image: GET /v1/models/{id} says so and /result reports `cost`
    seed: int = 0
    names: tuple[str, ...] = ()  # as given, for reprs and the server's start line

    def __post_init__(self) -> None:
        for name in ("submit_5xx_after_accept", "html_503", "rate_limit", "rate_limit_bare"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"quirk {name} is a probability: give a number from 0 to 1, not {value}")
        if self.html_503 + self.rate_limit + self.rate_limit_bare > 1 + 1e-9:
            raise ConfigError("quirks html_503, rate_limit and rate_limit_bare add up to more than 1; lower them")
        if self.balance_after is not None and self.balance_after < 0:
            raise ConfigError(f"quirk balance_after is a number of jobs >= 0, not {self.balance_after}")
        if not 0 <= self.other_users < 10:
            raise ConfigError(f"quirk other_users is a load, a fraction of capacity (0 to 10), not {self.other_users}")
        if self.price is not None and not 0 <= self.price < 1000:
            raise ConfigError(f"quirk price is USD per image (0 to 1000), not {self.price}")
        if self.snap not in (1, 16, 32):
            raise ConfigError(f"Quirks.snap must be 1, 16 or 32, not {self.snap}")
        checks = (("position", PositionStyle), ("output", OutputShape), ("file_format", FileFormat))
        for field, kind in checks:
            if getattr(self, field) not in get_args(kind):
                raise ConfigError(f"Quirks.{field} must be one of {', '.join(get_args(kind))}")

    @classmethod
    def parse(cls, specs: Iterable[str] | str | Quirks | None = ()) -> Quirks:
        """Quirks from names like "position_1based" or "html_503=0.2" (a single string is one name)."""
        if isinstance(specs, Quirks):
            return specs
        if specs is None:
            return cls()
        items = [specs] if isinstance(specs, str) else list(specs)
        settings: dict[str, Any] = {}
        for spec in items:
            settings |= _settings(spec)
        return cls(**settings, names=tuple(str(s).strip() for s in items))

    def __str__(self) -> str:
        return ", ".join(self.names) or "none"


NO_QUIRKS = Quirks()  # the default: the docs' variant of every answer


def _settings(spec: str) -> dict[str, Any]:
    """The fields one quirk name (with its optional value) sets."""
    if not isinstance(spec, str):
        raise ConfigError(f"a quirk is a name like 'position_1based', not {spec!r}")
    name, has_value, text = spec.strip().partition("=")
    if name == "strict" and not has_value:
        settings: dict[str, Any] = {}
        for part in STRICT:
            settings |= _settings(part)
        return settings | {"html_503": 0.05, "html_503_endpoints": ("status", "result", "cancel")}
    if name in _FLAGS:
        if has_value:
            raise ConfigError(f"quirk {name} takes no value; write just {name!r}")
        return _FLAGS[name]
    if name not in _VALUED:
        raise ConfigError(f"unknown quirk {name!r}; choose from {', '.join(QUIRK_NAMES)}")
    field, kind, default = _VALUED[name]
    if not has_value:
        if default is None:
            raise ConfigError(f"quirk {name} needs a value, e.g. {name}=5")
        return {field: default}
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"quirk {name}={text!r}: expected {'an integer' if kind is int else 'a number'}") from None
    return {field: value}


@dataclasses.dataclass(frozen=True)
class Answer:
    """A whole HTTP answer decided without Starlette: status, body bytes, media type, extra headers."""

    status: int
    body: bytes
    media_type: str | None = "application/json"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, json.dumps(body).encode(), "application/json", headers or {})


def _html(status: int, title: str) -> Answer:
    page = f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
    return Answer(status, (page + "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n").encode(), "text/html")


def decide_call(quirks: Quirks, endpoint: str, draw: float) -> QuirkCall | None:
    """Whether a load balancer or rate limiter answers this call instead of the service (one draw)."""
    table: list[tuple[QuirkCall, float]] = [
        ("html_503", quirks.html_503 if endpoint in quirks.html_503_endpoints else 0.0),
        ("rate_limited", quirks.rate_limit),
        ("rate_limited_bare", quirks.rate_limit_bare),
    ]
    edge = 0.0
    for name, probability in table:
        edge += probability
        if draw < edge:
            return name
    return None


def html_503() -> Answer:
    """A load balancer's 503 page: HTML, no JSON at all."""
    return _html(503, "503 Service Temporarily Unavailable")


def gateway_error(turn: int) -> Answer:
    """The answer to a submit whose job was created but whose answer was lost: 502 HTML, 504, 500 in turn."""
    kind = turn % 3
    if kind == 0:
        return _html(502, "502 Bad Gateway")
    if kind == 1:
        return _json(504, {"message": "Endpoint request timed out"})
    return _json(500, {"error_code": 500000, "error_message": "internal server error"})


def refused_token(quirks: Quirks) -> Answer:
    """A missing or wrong token: 401 with RunComfy's error body, or 403 with only `message`."""
    if quirks.auth_403_message:
        return _json(403, {"message": "Forbidden: invalid API token"})
    message = "missing, expired or revoked token: send 'Authorization: Bearer <token>' with an accepted token"
    return _json(401, {"error_code": 400004, "error_message": message}, {"WWW-Authenticate": "Bearer"})


def balance_refusal(quirks: Quirks, accepted: int) -> Answer | None:
    """402 / 400002 once `balance_after` jobs have been accepted; None while there is balance left."""
    if quirks.balance_after is None or accepted < quirks.balance_after:
        return None
    message = "insufficient balance: top up your RunComfy account to submit more jobs"
    return _json(402, {"error_code": 400002, "error_message": message})


def not_ready(quirks: Quirks, state: str) -> Answer | None:
    """/result of an unfinished job: None (answer 200 with the state) or the 400 / 400005 variant."""
    if not quirks.not_ready_400 or state not in ("in_queue", "in_progress"):
        return None
    return _json(400, {"error_code": 400005, "error_message": f"request is not completed yet (status: {state})"})


def success(quirks: Quirks, body: dict[str, Any]) -> dict[str, Any]:
    """A success body, with `"error_code": null, "error_message": null` under `null_error_code`."""
    return body | {"error_code": None, "error_message": None} if quirks.null_error_code else body


def position_field(quirks: Quirks, state: str, position: int | None) -> dict[str, Any]:
    """The `queue_position` field of a /status body (0-based `position`, None when not queued)."""
    if quirks.position == "null":
        return {"queue_position": None}
    if position is None or state != "in_queue" or quirks.position == "missing":
        return {}
    return {"queue_position": position + 1 if quirks.position == "1based" else position}


def cancelled_word(quirks: Quirks, word: str) -> str:
    """`cancelled` as this server spells it (a status or a cancel outcome)."""
    return "canceled" if word == "cancelled" and quirks.cancel_canceled else word


def status_word(quirks: Quirks, state: str) -> str:
    """The /status word for a job `state`: a failed job says `completed` (or `failed` with `status_failed`)."""
    if state == "succeeded" or (state == "failed" and not quirks.status_failed):
        return "completed"
    return cancelled_word(quirks, state)


def result_word(quirks: Quirks, state: str) -> str:
    """The /result word: `succeeded` (or `completed` with `completed_result`), else the state."""
    if state == "succeeded" and quirks.completed_result:
        return "completed"
    return cancelled_word(quirks, state)


def failure_error(quirks: Quirks, message: str) -> Any:
    """/result's `error` for a failed job: an object, or a plain string with `status_failed`."""
    return message if quirks.status_failed else {"code": "generation_failed", "message": message}


STATUS_FAILED_ERROR = "Model run failed"


def output_value(quirks: Quirks, url: str) -> Any:
    """/result's `output` holding the one output `url`, in the shape the quirks ask for."""
    shapes: dict[OutputShape, Any] = {
        "image": {"image": url},
        "images": {"images": [url]},
        "string": url,
        "list": [url],
        "objects": {"images": [{"url": url, "content_type": media_type(quirks), "file_name": url.rsplit("/", 1)[-1]}]},
    }
    return shapes[quirks.output]


EXTENSIONS: dict[FileFormat, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def media_type(quirks: Quirks) -> str:
    """The Content-Type the file route sends."""
    if quirks.generic_content_type:
        return "binary/octet-stream"
    return f"image/{quirks.file_format}"


def snapped(quirks: Quirks, width: int, height: int) -> tuple[int, int]:
    """The size rendered for an asked size: floored to a multiple of `snap` (never below it)."""
    step = quirks.snap
    return max(step, width // step * step), max(step, height // step * step)


def second_host(host: str) -> str:
    """Another name for the same loopback address, so output URLs sit on a host that is not the API's."""
    return {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}.get(host, host)
