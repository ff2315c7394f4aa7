"""Job handles, generations, and the one waiting loop that every caller uses (each wait has a deadline)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from zlab import errors
from zlab.api import API
from zlab.follow import follow
from zlab.polling import Track
from zlab.protocol import Outcome, Status
from zlab.request import Request

if TYPE_CHECKING:
    from zlab.client import AsyncClient


@dataclasses.dataclass(frozen=True, eq=False)
class Generation:
    """One finished image: the picture, what asked for it, and how long it took."""

    request: Request | dict[str, Any]
    request_id: str
    url: str
    data: bytes = dataclasses.field(repr=False)
    image: Image.Image = dataclasses.field(repr=False)
    created_at: datetime | None = None
    finished_at: datetime | None = None
    queue_s: float | None = None
    run_s: float | None = None

    def save(self, path: str | Path) -> Path:
        """Write the image bytes exactly as downloaded (no re-encoding)."""
        from zlab.download import write_atomic

        target = Path(path)
        write_atomic(target, self.data)
        return target

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG")
        return buffer.getvalue()

    def __repr__(self) -> str:
        return f"<Generation {self.request_id} {self.image.width}x{self.image.height}>"


@dataclasses.dataclass(frozen=True)
class Job:
    """A submitted job (async handle). Obtain from `AsyncClient.submit`; `Client.submit` wraps it."""

    request_id: str
    request: Request | dict[str, Any] | None
    model: str
    _client: AsyncClient = dataclasses.field(repr=False, compare=False)
    _track: Track = dataclasses.field(repr=False, compare=False, default_factory=lambda: Track(time.monotonic()))

    async def status(self) -> Status:
        """The current state (one /status call)."""
        return await self._client.api.status(self.request_id)

    async def result(self) -> Outcome:
        """The /result answer now: outputs if finished, else the current phase."""
        return await self._client.api.result(self.request_id)

    async def cancel(self) -> str:
        """Cancel if still queued; returns `cancelled` or `not_cancellable`. Twice is harmless."""
        return await self._client.api.cancel(self.request_id)

    async def wait(self, timeout: float = 600.0) -> Outcome:
        """Wait until the job ends (adaptive polling); raise JobFailed / JobCancelled / WaitTimeout."""
        deadline = time.monotonic() + timeout
        outcome = await follow(self._client.api, self.request_id, self._track, self._client.pacer, deadline=deadline)
        if outcome.phase == "failed":
            raise errors.JobFailed(
                f"request {self.request_id} failed: {outcome.error!r}", request_id=self.request_id, detail=outcome.error
            )
        if outcome.phase == "cancelled":
            raise errors.JobCancelled(f"request {self.request_id} was cancelled", request_id=self.request_id)
        return outcome

    async def download(self, timeout: float = 600.0) -> Generation:
        """Wait, then download and check the first output image."""
        outcome = await self.wait(timeout)
        return await self._client.collect(self, outcome)
