"""Slow clients: a request body must arrive within a deadline, or the request ends with 408.

A client that opens a request and dribbles its body a byte at a time (slowloris) would otherwise hold a
connection, a task and a partly filled buffer for as long as it likes. This ASGI middleware gives every
request body `timeout_s` from the first read: past it, the endpoint's next read raises
`RequestTimeoutError`, which the app answers with 408 and `Connection: close`. Only the body is timed: once
it is complete, reads pass through untouched (server-sent events and long polls wait on them for
disconnects). Body *size* is limited where the body is read (app.py `_read_body`: 413 before buffering).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keel.errors import RequestTimeoutError

__all__ = ["BodyDeadline"]


class BodyDeadline:
    """ASGI middleware: 408 for a request whose body takes longer than `timeout_s` to arrive."""

    def __init__(self, app: ASGIApp, *, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the body reads of HTTP requests; pass everything else through."""
        if scope["type"] != "http" or self.timeout_s <= 0:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline: list[float] = []  # set at the first read: the clock starts when the app wants the body
        complete = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            if not deadline:
                deadline.append(loop.time() + self.timeout_s)
            try:
                async with asyncio.timeout_at(deadline[0]):
                    message: dict[str, Any] = dict(await receive())
            except TimeoutError:
                raise RequestTimeoutError(
                    f"the request body did not arrive within {self.timeout_s:g} s (send it faster, or send less)"
                ) from None
            if message.get("type") != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, timed_receive, send)
