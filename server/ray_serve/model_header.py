"""In Ray's HTTP proxy: copy the body's `model` into the header Ray Serve's model multiplexing routes by.

OpenAI clients name the adapter in the JSON body; Ray's proxy routes on the `serve_multiplexed_model_id`
header, before any replica sees the body. So the body is read here (up to a cap), the header set from
it, and the same body replayed to the proxy.
"""

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import header_names

MODEL_ID_HEADER = b"serve_multiplexed_model_id"
MAX_PEEK_BYTES = 1 << 20  # bigger bodies pass untouched (the replica answers 413 unless it allows more)


def _is_model_header(name: bytes) -> bool:
    return name.lower().replace(b"-", b"_") == MODEL_ID_HEADER  # Ray accepts either spelling


def model_of(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:  # UnicodeDecodeError included
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, str) or not model:
        return None
    try:
        return header_names.encode(model)  # percent-encoded: ReplicaTag decodes it
    except ValueError:  # not Unicode: no adapter has that name; the replica answers 400
        return None


class ModelIdFromBody:
    def __init__(self, app: ASGIApp, max_peek_bytes: int = MAX_PEEK_BYTES):
        self.app = app
        self.max_peek_bytes = max_peek_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        left: list[Message] = []
        while more and len(body) <= self.max_peek_bytes:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                left.append(message)
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
        model = None if more else model_of(body)
        # the client's own header never disagrees with its body: the body wins, or no header when it names nothing
        headers = [(k, v) for k, v in scope["headers"] if not _is_model_header(k)]
        if model is not None:
            headers.append((MODEL_ID_HEADER, model.encode()))

        read = [{"type": "http.request", "body": body, "more_body": more}, *left]

        async def replay() -> Message:
            return read.pop(0) if read else await receive()

        await self.app({**scope, "headers": headers}, replay, send)
