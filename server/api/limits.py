"""--max-body-bytes: bodies past the cap get 413 before anything parses them; --body-timeout:
a body not fully received in time gets 408 (a slow client must not hold its buffer forever).

The body is read here (at most the cap is kept) and replayed to the app, so a chunked upload is
capped as surely as one with Content-Length. An oversized body is drained up to a bound before
answering: closing a socket with unread data resets it, and the client would never see the 413.
"""

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.errors import PayloadTooLarge, RequestTimeout

_DRAIN_BYTES = 16 << 20  # unread bytes an oversized request may still send before we stop reading


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s or None  # 0 = no limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.timeout_s if self.timeout_s else None
        while True:
            try:
                message = await asyncio.wait_for(receive(), None if deadline is None else deadline - time.monotonic())
            except TimeoutError:
                err = RequestTimeout(f"the request body was not received within {self.timeout_s:g}s",
                                     headers={"Connection": "close"})
                await err.response()(scope, receive, send)
                return
            if message["type"] != "http.request":
                return  # the client left before sending its body
            body = message.get("body", b"")
            size += len(body)
            if size <= self.max_bytes:
                chunks.append(body)
            if not message.get("more_body", False) or size > self.max_bytes + _DRAIN_BYTES:
                break
        if size > self.max_bytes:
            err = PayloadTooLarge(f"the request body is over {self.max_bytes} bytes")
            await err.response()(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: http.disconnect, which streams listen for
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)
