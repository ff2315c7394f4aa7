"""Generated dialects: a seed picks one plausible way for the whole service to speak.

`runcomfy-api.md` lists what the real service may answer, and then says the list is never complete
("Answers no one listed"). So besides the named quirks, the local server can speak a *generated*
dialect: `Dialect.from_seed(seed)` draws, within the plausible space, the status vocabulary and its
casing (including a word zlab does not know for the running phase), where outputs sit and in which
envelope (URLs, objects with `url`/`uri`, dicts keyed by node or name, inline `data:` URIs, more than
one image), the request-id style (dots, colons, spaces, digits), where "not ready" and a failed job's
error are put (a body, a 400 with a code, a 404 with only a `detail`, an HTTP 500/422), how long
/result trails /status after a job finished and how that lag shows (404, an empty output, not ready,
still in progress), what a success body says in `error_code`, how a cancel lands (at once, an empty
202, or a moment later), redirects, file formats and content types.

    srv.set_dialect(1234)        # live, from any thread; set_dialect(None) returns to the named quirks

Everything here is a pure decision over a job's state: the app (`zlab.server.app`) calls
`status_answer`, `result_answer` and `cancel_answer`, and takes ids from `new_id`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import random
import uuid
from typing import TYPE_CHECKING, Any, Literal, get_args

from zlab.server.quirks import Quirks

if TYPE_CHECKING:
    from zlab.server.scheduler import Job
    from zlab.server.state import ServerState

Case = Literal["lower", "upper", "title"]
Envelope = Literal["image", "images", "string", "list", "objects", "node", "named", "uri_objects", "two"]
IdStyle = Literal["uuid", "prefixed", "numeric", "dotted", "colon", "spaced", "tilde"]
NotReadyForm = Literal["status_200", "code_400", "detail_404", "detail_400", "code_200"]
LagForm = Literal["404", "empty", "not_ready", "in_progress"]
FailedForm = Literal["body", "http_500", "http_422"]
SuccessCode = Literal["absent", "null", "zero", "empty"]
CancelForm = Literal["immediate", "empty_202", "later"]

_WORDS: dict[str, tuple[str, ...]] = {  # plausible words per phase, from RunComfy, fal, Replicate, RunPod
    "queued": ("in_queue", "queued", "pending", "IN_QUEUE", "starting"),
    "running": ("in_progress", "running", "processing", "IN_PROGRESS"),
    "finished": ("completed", "succeeded", "success", "COMPLETED"),
    "failed": ("failed", "error", "failure", "FAILED"),
    "cancelled": ("cancelled", "canceled", "CANCELLED"),
}
UNKNOWN_WORDS = ("warming_up", "BOOTING", "rendering", "gpu_assigned", "uploading")  # words zlab does not know
LAG_CHOICES = (0.0, 0.0, 0.05, 0.2, 0.4)
ENVELOPES: tuple[Envelope, ...] = get_args(Envelope)
CANCEL_LATER_S = 0.2


@dataclasses.dataclass(frozen=True)
class Dialect:
    """One generated way of speaking (see the module docstring); build with `Dialect.from_seed`."""

    seed: int
    words: dict[str, str]  # phase ("queued", "running", "finished", "failed", "cancelled") → word on the wire
    case: Case = "lower"
    unknown_running: str | None = None  # said instead of the running word (a word zlab does not know)
    output_key: Literal["output", "outputs"] = "output"
    envelope: Envelope = "image"
    data_uri: bool = False
    id_style: IdStyle = "uuid"
    not_ready: NotReadyForm = "status_200"
    lag_s: float = 0.0
    lag_form: LagForm = "empty"
    failed: FailedForm = "body"
    status_failed: bool = False  # /status says the failed word (else `completed`, as on RunComfy)
    success_code: SuccessCode = "absent"
    cancel: CancelForm = "immediate"
    quirks: Quirks = dataclasses.field(default_factory=Quirks)  # files and positions, as the named quirks do

    @classmethod
    def from_seed(cls, seed: int) -> Dialect:
        """The dialect seed `seed` picks (the same seed always gives the same dialect)."""
        rng = random.Random(seed)
        words = {phase: rng.choice(options) for phase, options in _WORDS.items()}
        names = [
            rng.choice(("position_1based", "position_missing", "position_null", "")),
            rng.choice(("jpeg_output", "webp_output", "", "")),
            rng.choice(("generic_content_type", "")),
            rng.choice(("redirect_files", "")),
        ]
        return cls(
            seed=seed,
            words=words,
            case=rng.choice(("lower", "upper", "title")),
            unknown_running=rng.choice((None, None, *UNKNOWN_WORDS)),
            output_key=rng.choice(("output", "outputs")),
            envelope=rng.choice(ENVELOPES),
            data_uri=rng.random() < 0.2,
            id_style=rng.choice(("uuid", "prefixed", "numeric", "dotted", "colon", "spaced", "tilde")),
            not_ready=rng.choice(("status_200", "code_400", "detail_404", "detail_400", "code_200")),
            lag_s=rng.choice(LAG_CHOICES),
            lag_form=rng.choice(("404", "empty", "not_ready", "in_progress")),
            failed=rng.choice(("body", "http_500", "http_422")),
            status_failed=rng.random() < 0.5,
            success_code=rng.choice(("absent", "null", "zero", "empty")),
            cancel=rng.choice(("immediate", "empty_202", "later")),
            quirks=Quirks.parse([n for n in names if n]),
        )  # fmt: skip

    def word(self, phase: str) -> str:
        """The word for `phase`, in this dialect's casing."""
        raw = self.unknown_running if phase == "running" and self.unknown_running else self.words[phase]
        return {"lower": raw.lower(), "upper": raw.upper(), "title": raw.title()}[self.case]

    def describe(self) -> str:
        """One line naming every choice (for a failing example's report)."""
        fields = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.name != "quirks"]
        return ", ".join(fields) + f", quirks={self.quirks}"


Reply = tuple[int, Any]  # (HTTP status, JSON body or None for an empty body)


def new_id(dialect: Dialect) -> str:
    """A fresh request id in this dialect's style (unique: each carries random hex)."""
    hex_ = uuid.uuid4().hex
    return {
        "uuid": str(uuid.UUID(hex_)),
        "prefixed": f"req_{hex_[:20]}",
        "numeric": str(int(hex_[:13], 16)),
        "dotted": f"v1.{hex_[:12]}..{hex_[12:16]}",
        "colon": f"urn:job:{hex_[:16]}",
        "spaced": f"job {hex_[:12]}",
        "tilde": f"~{hex_[:16]}~",
    }[dialect.id_style]


def with_success_code(dialect: Dialect, body: dict[str, Any]) -> dict[str, Any]:
    """A success body with this dialect's `error_code` (absent, null, 0 or "")."""
    extra: dict[str, dict[str, Any]] = {
        "absent": {},
        "null": {"error_code": None, "error_message": None},
        "zero": {"error_code": 0},
        "empty": {"error_code": "", "error_message": ""},
    }
    return body | extra[dialect.success_code]


def _phase(state: str) -> str:
    return {"in_queue": "queued", "in_progress": "running", "succeeded": "finished"}.get(state, state)


def status_answer(dialect: Dialect, request_id: str, state: str, position: int | None) -> Reply:
    """/status for a job in `state` (the scheduler's: in_queue, in_progress, succeeded, failed, cancelled)."""
    phase = _phase(state)
    if phase == "failed" and not dialect.status_failed:
        phase = "finished"
    body: dict[str, Any] = {"request_id": request_id, "status": dialect.word(phase)}
    if state == "in_queue" and position is not None:
        style = dialect.quirks.position
        if style != "missing":
            body["queue_position"] = None if style == "null" else position + (style == "1based")
    if phase == "failed":
        body["error"] = "Model run failed"
    return 200, with_success_code(dialect, body)


def not_ready_answer(dialect: Dialect, request_id: str, state: str, form: NotReadyForm | None = None) -> Reply:
    """/result for a job that has not finished (or whose result lags), in this dialect's form."""
    form = form or dialect.not_ready
    if form == "status_200":
        return 200, with_success_code(dialect, {"request_id": request_id, "status": dialect.word(_phase(state))})
    if form == "code_400":
        return 400, {"error_code": 400005, "error_message": "result not ready"}
    if form == "code_200":
        return 200, {"request_id": request_id, "error_code": 400005, "error_message": "Result is not ready yet"}
    if form == "detail_404":
        return 404, {"detail": "Result not ready"}
    return 400, {"detail": "The job is still processing; try again later"}


def lagging(dialect: Dialect, finished_for_s: float | None) -> bool:
    """Whether /result still trails /status for a job that finished `finished_for_s` seconds ago."""
    return finished_for_s is not None and finished_for_s < dialect.lag_s


def lag_answer(dialect: Dialect, request_id: str) -> Reply:
    """/result of a finished job whose result store has not caught up yet."""
    if dialect.lag_form == "404":
        return 404, {"error_code": 404001, "error_message": f"request {request_id} not found"}
    if dialect.lag_form == "empty":
        return 200, with_success_code(dialect, {"request_id": request_id, "status": dialect.word("finished"),
                                       dialect.output_key: {}})  # fmt: skip
    if dialect.lag_form == "in_progress":
        return not_ready_answer(dialect, request_id, "in_progress", "status_200")
    return not_ready_answer(dialect, request_id, "in_progress")


def failed_answer(dialect: Dialect, request_id: str, reason: str) -> Reply:
    """/result of a failed job: a body with the failed word, or only an HTTP 500 / 422."""
    if dialect.failed == "http_500":
        return 500, {"detail": reason}
    if dialect.failed == "http_422":
        return 422, {"detail": [{"loc": ["body"], "msg": reason, "type": "job_failed"}]}
    body = {"request_id": request_id, "status": dialect.word("failed"), "error": reason}
    return 200, with_success_code(dialect, body)


def file_ref(dialect: Dialect, url: str, data: bytes | None, media_type: str) -> str:
    """Where the image is: its URL, or the bytes inline as a `data:` URI."""
    if dialect.data_uri and data is not None:
        return f"data:{media_type};base64,{base64.b64encode(data).decode()}"
    return url


def success_answer(dialect: Dialect, request_id: str, ref: str, extra: dict[str, Any]) -> Reply:
    """/result of a finished job, its image `ref` in this dialect's envelope."""
    name = "output.png"
    envelopes: dict[str, Any] = {
        "image": {"image": ref},
        "images": {"images": [ref]},
        "string": ref,
        "list": [ref],
        "objects": {"images": [{"url": ref, "content_type": "image/png", "file_name": name}]},
        "node": {"9": {"images": [{"filename": name, "subfolder": "", "type": "output", "url": ref}]}},
        "named": {"SaveImage": {"image": ref}},
        "uri_objects": [{"uri": ref, "content_type": "image/png"}],
        "two": [ref, ref + ("#2" if not ref.startswith("data:") else "")],
    }
    body = {"request_id": request_id, "status": dialect.word("finished")}
    return 200, with_success_code(dialect, body | {dialect.output_key: envelopes[dialect.envelope]} | extra)


def cancel_answer(dialect: Dialect, request_id: str, state: str, outcome: str) -> Reply:
    """The answer to a cancel; with `later`, a queued job's cancel is only "requested" (it lands a moment
    later, `CANCEL_LATER_S`), and the app delays the scheduler's cancel by as much."""
    if dialect.cancel == "empty_202":
        return 202, None
    if dialect.cancel == "later" and state == "in_queue":
        body = {"request_id": request_id, "status": "cancel_requested", "outcome": "requested"}
        return 202, with_success_code(dialect, body)
    word = dialect.word("cancelled") if outcome == "cancelled" else "not_cancellable"
    body = {"request_id": request_id, "status": dialect.word(_phase(state)), "outcome": word}
    return 202, with_success_code(dialect, body)


async def result_reply(state: ServerState, job: Job, url: str, finished_for_s: float | None) -> Reply:
    """/result of `job` in the dialect in force (the app's hook): not ready, lagging, failed, or its image."""
    dialect = state.dialect
    assert dialect is not None
    if job.state in ("in_queue", "in_progress"):
        return not_ready_answer(dialect, job.request_id, job.state)
    if lagging(dialect, finished_for_s):
        return lag_answer(dialect, job.request_id)
    if job.state == "failed":
        return failed_answer(dialect, job.request_id, job.error or "Model run failed")
    if job.state == "cancelled":
        return 200, with_success_code(dialect, {"request_id": job.request_id, "status": dialect.word("cancelled")})
    data: bytes | None = None
    fmt = state.quirks.file_format
    if dialect.data_uri and job.bad_output is None:
        if job.output is not None:
            data = job.output.data
        else:
            from zlab.server import synthetic

            make = functools.partial(synthetic.render_bytes, job.request, fmt)
            data = await state.images.get((job.request_id, False, fmt), make)
    return success_answer(dialect, job.request_id, file_ref(dialect, url, data, f"image/{fmt}"), {})


def cancel_reply(state: ServerState, job: Job) -> Reply:
    """Cancel `job` in the dialect in force (the app's hook); a `later` cancel lands `CANCEL_LATER_S` on."""
    dialect = state.dialect
    assert dialect is not None
    before = job.state
    if dialect.cancel == "later" and before == "in_queue":
        asyncio.get_running_loop().call_later(CANCEL_LATER_S, state.scheduler.cancel, job)
        outcome = "requested"
    else:
        outcome = state.scheduler.cancel(job)
    return cancel_answer(dialect, job.request_id, job.state, outcome)
