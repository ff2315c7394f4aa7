"""A renderer for the local server whose jobs end when a test says so: job ends are events, not times.

gate = Gate(capacity=2, seeds=range(3))
with LocalServer(renderer=gate) as srv: ...   # a job of seed 1 runs until gate.open(1)
"""

from __future__ import annotations

import asyncio
import io
import threading

from PIL import Image

from zlab.core.request import Request
from zlab.server.backend import Rendered


class Gate:
    """Renders a plain PNG of the request's size once the gate of its seed opens."""

    name = "gate"

    def __init__(self, capacity: int, seeds: range) -> None:
        self.capacity = capacity
        self.gates = {seed: threading.Event() for seed in seeds}

    async def render(self, request: Request) -> Rendered:
        await asyncio.to_thread(self.gates[request.seed].wait)
        out = io.BytesIO()
        Image.new("RGB", (request.width, request.height), (40, 90, 160)).save(out, "PNG")
        return Rendered(out.getvalue())

    def open(self, seed: int) -> None:
        """Let the job of `seed` finish (now, or as soon as it starts)."""
        self.gates[seed].set()

    def describe(self) -> dict[str, str]:
        return {"backend": "gate"}

    def close(self) -> None:
        for gate in self.gates.values():
            gate.set()
