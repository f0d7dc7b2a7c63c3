"""In Ray's HTTP proxy: finish responses a replica stopped answering, with an OpenAI-shaped error.

When a replica dies, Ray's proxy ends the request without a word: no response at all before the first
byte (uvicorn then sends a bare 500), or a chunked body that just stops. Here the first becomes a 503
`replica_failed` error the client may retry, and a cut-off event stream gets an error event and
`data: [DONE]`, the way a loraplex server reports an error mid-stream.
"""

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

TYPE = "service_unavailable"
CODE = "replica_failed"
BEFORE = "the replica serving this request stopped before answering (Ray replaces a dead replica); retry"
DURING = "the replica serving this stream stopped mid-response (Ray replaces a dead replica)"


def error_json(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": TYPE, "param": None, "code": CODE}}).encode()


class _Watch:
    """Passes messages on, noting how far the response got."""

    def __init__(self, send: Send):
        self._send = send
        self.started = False
        self.finished = False
        self.event_stream = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = dict(message.get("headers", []))
            self.event_stream = headers.get(b"content-type", b"").startswith(b"text/event-stream")
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)


class CutOffResponses:
    def __init__(self, app: ASGIApp, retry_after_s: int = 1):
        self.app = app
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watch = _Watch(send)
        await self.app(scope, receive, watch.send)
        if watch.finished:
            return
        if not watch.started:
            body = error_json(BEFORE)
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"retry-after", self.retry_after)]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif watch.event_stream:
            tail = b"data: " + error_json(DURING) + b"\n\ndata: [DONE]\n\n"
            await send({"type": "http.response.body", "body": tail})
        else:  # a body of another kind cannot carry an error: end it so the client sees it short
            await send({"type": "http.response.body", "body": b""})
