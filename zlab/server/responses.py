"""The local server's kinds of answer: error bodies, refusals, dropped connections, trickled bodies.

error(status, code, message)   RunComfy's error shape `{"error_code", "error_message", "detail"?}`
Refused(response)              raised by a route's checks to answer `response` at once
DroppedResponse                not an answer: the connection is cut (no response, or half a body)
trickled(body, every)          the full Content-Length at once, then one byte every `every` seconds
from_answer(answer)            a `quirks.Answer` (decided without Starlette) as a Response
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from zlab.server.faults import DropMode
from zlab.server.quirks import Answer

RAW_SEND = "zlab.raw_send"  # the scope key where `_App` leaves uvicorn's own `send`


class Refused(Exception):
    """Stop handling a call and answer `response` (auth, lookups, body checks, injected faults)."""

    def __init__(self, response: Response) -> None:
        self.response = response


def error(status: int, code: int, message: str, detail: Any = None, headers: dict[str, str] | None = None) -> Response:
    """An error answer in RunComfy's shape: `{"error_code", "error_message", "detail"?}`."""
    body: dict[str, Any] = {"error_code": code, "error_message": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)


def from_answer(answer: Answer) -> Response:
    """A pure decision's answer as a Starlette response (an empty body gets no Content-Type)."""
    media = answer.media_type if answer.body else None
    return Response(answer.body, status_code=answer.status, media_type=media, headers=answer.headers)


def trickled(body: bytes, every: float, media_type: str | None, status: int = 200) -> Response:
    """`body` one byte every `every` seconds, Content-Length announced up front (tests total deadlines:
    a client with only a per-read timeout would wait len(body) × every seconds)."""

    async def drip() -> AsyncIterator[bytes]:
        for index in range(len(body)):
            if index:
                await asyncio.sleep(every)
            yield body[index : index + 1]

    headers = {"Content-Length": str(len(body))}
    return StreamingResponse(drip(), status_code=status, media_type=media_type, headers=headers)


class DroppedResponse(Response):
    """Not an answer: cut the connection, with no response (`close`) or after half of `body` (`truncate`).

    Needs uvicorn: the cut goes through the transport behind uvicorn's own `send`, which the
    outermost layer (`_App`) leaves in the scope, because Starlette's middleware wraps `send`.
    """

    def __init__(self, mode: DropMode, body: bytes) -> None:
        super().__init__(body, media_type="application/json")
        self.mode = mode

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_send = scope[RAW_SEND]
        cycle = getattr(raw_send, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if transport is None:
            raise RuntimeError("dropping a connection needs uvicorn (run the app with LocalServer or serve)")
        if self.mode == "truncate":
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]
            await raw_send({"type": "http.response.start", "status": 200, "headers": headers})
            await raw_send({"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True})
        transport.close()
        # Let uvicorn see the disconnect before we return, or it would answer 500 on the dead connection.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while not getattr(cycle, "disconnected", True) and loop.time() < deadline:
            await asyncio.sleep(0.001)
