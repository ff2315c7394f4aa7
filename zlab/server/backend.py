"""The seam between the local server's job queue and whatever makes the images.

Two kinds of backend sit behind the same four endpoints:

- the synthetic one (`zlab.server.synthetic`): a job "runs" for the `Latency` model's time and its
  PNG is drawn when the file is first fetched (fast, deterministic, cached);
- a `Renderer` (e.g. the diffusers backend on your GPU): a job runs for exactly as long as its
  render takes; the scheduler awaits `render(request)` when the job starts, and the job succeeds
  with the returned bytes or fails with the renderer's error message.

`Renderer.capacity` is how many jobs the scheduler hands the renderer at once, which becomes its
capacity: the diffusers backend takes three per device, so that while a device renders one image the
next is already prepared and the previous one is being PNG-encoded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

from zlab.core.request import Request


@dataclasses.dataclass(frozen=True)
class Rendered:
    """One finished render: the encoded image, its media type, and facts about how it was made."""

    data: bytes = dataclasses.field(repr=False)
    media_type: str = "image/png"
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # model id, versions, dtype, device, …


class RenderError(Exception):
    """A render failed in a way the user should read (e.g. a LoRA whose keys do not match the model)."""


class Renderer(Protocol):
    """A backend that renders during a job's run (see the module docstring)."""

    name: str
    capacity: int

    async def render(self, request: Request) -> Rendered:
        """Make the image for `request` (its seed is concrete); raise `RenderError` with a readable message."""
        ...

    def describe(self) -> Mapping[str, Any]:
        """What serves the images (model id, library versions, dtype, devices), for the server's start line."""
        ...

    def close(self) -> None:
        """Free devices and threads (the server is stopping)."""
        ...
