"""Fault injection for the local server: what can go wrong, how often, and pure decisions about it.

`Faults` is a frozen value of probabilities and switches; the server holds one at a time and a test
swaps it with `LocalServer.set_faults(...)`. Each call draws one number from a seeded `Dice`, and a
pure function (`decide_call`, `decide_job`, `decide_file`) turns the draw into at most one fault, so a
given seed and call order give the same faults every run. The app applies the decision.

>>> faults = Faults(rate_limited=0.5, server_error=0.5)
>>> decide_call(faults, "status", 0.2), decide_call(faults, "status", 0.7)
('rate_limited', 'server_error')

What a client sees for each fault:

    rate_limited        429 with `Retry-After: <retry_after>` and an error body
    rate_limited_bare   429 with no Retry-After
    server_error        500 with an error body
    unavailable         503 with an error body
    error_body          HTTP 200 whose body carries `error_code` (submit: the job is not created)
    drop_submit_before  submit: the connection drops before the job exists (safe to resend, but
                        the client cannot know that)
    drop_submit_after   submit: the job is accepted, then the connection drops (resending duplicates it)
    drop_poll           status/result/cancel: the connection drops
    job_failure         the job runs, /status says `completed`, /result says `failed`
    file_error / file_unavailable / file_missing   the output file answers 500 / 503 / 404
    file_delay          the output file waits this many seconds before answering
    bad_output          every job accepted while set has this malformed output (see `BadOutput`)

Hostile switches (decided when each call or file fetch arrives, so clearing them heals the same job):

    eventual_404_calls / eventual_404_seconds   a fresh job's first K polls, or its polls in its first
                        T seconds, answer 404 / 404001 (eventual consistency behind a load balancer)
    odd_ids             new request ids with punctuation (`punct`: `.`, `:`, `~`, `!`, `$`, ...,
                        `%`, `?`, `#`, space; never `/`) or 256 characters long (`long`)
    file_problem        a finished job's file answers 200 with an HTML page (`html_200`), 200 with
                        0 bytes (`empty`), or 302 redirects that loop forever (`redirect_loop`)
    file_expire_after   output URLs answer 404 once this many seconds have passed since the job finished
    trickle             status/result bodies and files (those in `trickle_on`) arrive one byte every
                        `trickle` seconds, with the full Content-Length announced

A drop either closes the connection with no response (`drop_mode="close"`) or sends the headers
and half the body, then closes (`"truncate"`); httpx raises a protocol or read error for both.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from typing import Literal, get_args

from zlab.errors import ConfigError

Endpoint = Literal["submit", "status", "result", "cancel"]
CallFault = Literal[
    "rate_limited",
    "rate_limited_bare",
    "server_error",
    "unavailable",
    "error_body",
    "drop_submit_before",
    "drop_submit_after",
    "drop_poll",
]
FileFault = Literal["file_error", "file_unavailable", "file_missing"]
DropMode = Literal["close", "truncate"]
BadOutput = Literal["truncated", "wrong_type", "bomb", "oversized", "wrong_size", "non_http_url"]
FileProblem = Literal["html_200", "empty", "redirect_loop"]
OddIds = Literal["punct", "long"]
TrickleTarget = Literal["status", "result", "file"]
"""Malformed outputs: `truncated` (half a PNG), `wrong_type` (an HTML page served as text/html),
`bomb` (a tiny PNG declaring 100000×100000), `oversized` (a valid PNG padded to `oversized_bytes`,
sent without Content-Length), `wrong_size` (a valid image at half the asked size), `non_http_url`
(the result's output URL is `file:///etc/passwd`)."""

ENDPOINTS: tuple[Endpoint, ...] = get_args(Endpoint)
_ANSWER_FAULTS: tuple[CallFault, ...] = (
    "rate_limited",
    "rate_limited_bare",
    "server_error",
    "unavailable",
    "error_body",
)
PROBABILITIES = (
    *_ANSWER_FAULTS,
    "drop_submit_before",
    "drop_submit_after",
    "drop_poll",
    "job_failure",
    *get_args(FileFault),
)


@dataclasses.dataclass(frozen=True)
class Faults:
    """How often each fault happens (probabilities 0..1) and how faults behave; all off by default.

    The answer faults (429s, 5xx, `error_body`) hit only the endpoints in `endpoints`. For one call
    the probabilities that apply to it must add up to at most 1: one draw picks at most one fault.
    """

    seed: int = 0
    rate_limited: float = 0.0
    rate_limited_bare: float = 0.0
    retry_after: float = 1.0
    server_error: float = 0.0
    unavailable: float = 0.0
    error_body: float = 0.0
    endpoints: tuple[Endpoint, ...] = ENDPOINTS
    drop_submit_before: float = 0.0
    drop_submit_after: float = 0.0
    drop_poll: float = 0.0
    drop_mode: DropMode = "close"
    job_failure: float = 0.0
    file_error: float = 0.0
    file_unavailable: float = 0.0
    file_missing: float = 0.0
    file_delay: float = 0.0
    bad_output: BadOutput | None = None
    oversized_bytes: int = 64 << 20
    eventual_404_calls: int = 0
    eventual_404_seconds: float = 0.0
    odd_ids: OddIds | None = None
    file_problem: FileProblem | None = None
    file_expire_after: float | None = None
    trickle: float = 0.0
    trickle_on: tuple[TrickleTarget, ...] = ("status", "result", "file")

    def __post_init__(self) -> None:
        for name in PROBABILITIES:
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"Faults.{name} is a probability: give a number from 0 to 1, not {value!r}")
        for name in ("retry_after", "file_delay", "eventual_404_seconds", "trickle", "file_expire_after"):
            if (getattr(self, name) or 0) < 0:
                raise ConfigError(f"Faults.{name} is seconds: give a number >= 0")
        if self.eventual_404_calls < 0:
            raise ConfigError("Faults.eventual_404_calls is a number of polls: give a number >= 0")
        object.__setattr__(self, "trickle_on", tuple(self.trickle_on))
        choices = (("odd_ids", OddIds), ("file_problem", FileProblem))
        for name, kind in choices:
            if getattr(self, name) is not None and getattr(self, name) not in get_args(kind):
                raise ConfigError(f"Faults.{name} must be one of {', '.join(get_args(kind))} or None")
        if set(self.trickle_on) - set(get_args(TrickleTarget)):
            raise ConfigError(f"Faults.trickle_on: choose from {', '.join(get_args(TrickleTarget))}")
        object.__setattr__(self, "endpoints", tuple(self.endpoints))
        unknown = set(self.endpoints) - set(ENDPOINTS)
        if unknown:
            raise ConfigError(f"Faults.endpoints: unknown {sorted(unknown)}; choose from {', '.join(ENDPOINTS)}")
        if self.drop_mode not in get_args(DropMode):
            raise ConfigError(f"Faults.drop_mode must be 'close' or 'truncate', not {self.drop_mode!r}")
        if self.bad_output is not None and self.bad_output not in get_args(BadOutput):
            raise ConfigError(f"Faults.bad_output must be one of {', '.join(get_args(BadOutput))} or None")
        for endpoint in ENDPOINTS:
            total = sum(p for _, p in _call_table(self, endpoint))
            if total > 1 + 1e-9:
                raise ConfigError(f"fault probabilities for {endpoint} add up to {total:g}; keep them at most 1")
        file_total = self.file_error + self.file_unavailable + self.file_missing
        if file_total > 1 + 1e-9:
            raise ConfigError(f"file fault probabilities add up to {file_total:g}; keep them at most 1")

    def replace(self, **changes: object) -> Faults:
        """A copy with some settings changed, checked again."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _call_table(faults: Faults, endpoint: str) -> list[tuple[CallFault, float]]:
    """The faults that can hit a call to `endpoint`, in the fixed order a draw walks them."""
    table: list[tuple[CallFault, float]] = []
    if endpoint in faults.endpoints:
        table += [(name, getattr(faults, name)) for name in _ANSWER_FAULTS]
    if endpoint == "submit":
        table += [("drop_submit_before", faults.drop_submit_before), ("drop_submit_after", faults.drop_submit_after)]
    else:
        table.append(("drop_poll", faults.drop_poll))
    return table


def _pick(table: list[tuple[str, float]], draw: float) -> str | None:
    edge = 0.0
    for name, probability in table:
        edge += probability
        if draw < edge:
            return name
    return None


def decide_call(faults: Faults, endpoint: str, draw: float) -> CallFault | None:
    """The fault (if any) for one call to `endpoint`, given a uniform draw in [0, 1)."""
    return _pick(_call_table(faults, endpoint), draw)  # type: ignore[arg-type, return-value]


def decide_job(faults: Faults, draw: float) -> bool:
    """Whether a newly accepted job will fail when it runs."""
    return draw < faults.job_failure


def not_yet_visible(faults: Faults, polls: int, age: float) -> bool:
    """Whether a job's poll number `polls` (1 for its first), `age` seconds after creation, answers 404."""
    return polls <= faults.eventual_404_calls or age < faults.eventual_404_seconds


def file_expired(faults: Faults, since_finished: float) -> bool:
    """Whether an output URL has expired `since_finished` seconds after its job finished."""
    return faults.file_expire_after is not None and since_finished >= faults.file_expire_after


_PUNCT = ".:~!$&'()*+,;=@%?# "


def odd_request_id(style: OddIds, token: str) -> str:
    """A request id RunComfy could plausibly send that breaks naive URL building: never contains `/`.

    >>> len(odd_request_id("long", "abc")), "/" in odd_request_id("punct", "abc")
    (256, False)
    """
    if style == "punct":
        return f"req.{token}:{_PUNCT}end"
    return f"req.{token}:" + ("x" * 256)[: 256 - len(token) - 5]


def decide_file(faults: Faults, draw: float) -> FileFault | None:
    """The fault (if any) for one download of an output file."""
    table = [("file_error", faults.file_error), ("file_unavailable", faults.file_unavailable)]
    return _pick([*table, ("file_missing", faults.file_missing)], draw)  # type: ignore[return-value]


class Dice:
    """A seeded, thread-safe source of uniform draws: the only randomness behind injected faults."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def draw(self) -> float:
        """The next uniform draw in [0, 1)."""
        with self._lock:
            return self._random.random()


NO_FAULTS = Faults()  # the default: nothing goes wrong
