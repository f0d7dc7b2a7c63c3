"""Counts every /v1 request by route and final status; a response that never finished counts as 499."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.metrics import Metrics

ROUTES = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/models"})
CLIENT_GONE = 499  # nginx's "client closed request"


class StatusCounter:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1"):
            await self.app(scope, receive, send)
            return
        status: int | None = None
        finished = False

        async def watch(message: Message) -> None:
            nonlocal status, finished
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            status, finished = 500, True
            raise
        finally:
            code = status if finished and status is not None else CLIENT_GONE
            self.metrics.requests.labels(path if path in ROUTES else "other", str(code)).inc()
