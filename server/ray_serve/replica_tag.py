"""In each replica, around the loraplex app: hold the request's model, and name the replica in the response.

Ray's proxy put the body's `model` in the request context as the multiplexed model id; awaiting the
replica's `@serve.multiplexed` loader with it is what makes Ray count the model as held here, so the
proxy sends the model's next requests to this replica. `x-loraplex-replica` shows where a request ran.
"""

import logging
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import header_names

REPLICA_HEADER = b"x-loraplex-replica"

log = logging.getLogger(__name__)


class ReplicaTag:
    def __init__(
        self, app: ASGIApp, replica: str, model_id: Callable[[], str], known: Callable[[str], bool],
        hold: Callable[[str], Awaitable[object]], authorized: Callable[[Scope], bool] = lambda scope: True,
    ):
        self.app = app
        self.replica = replica.encode()
        self.model_id = model_id  # serve.get_multiplexed_model_id
        self.known = known  # names this replica serves; others (404s) must not crowd real ones out of Ray's LRU
        self.hold = hold  # the @serve.multiplexed loader
        self.authorized = authorized  # a request without the API key must not make the replica load anything
        self._warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if model := self.model_id():
            model = header_names.decode(model)
            if self.known(model) and self.authorized(scope):
                await self.hold(model)
        elif scope["method"] == "POST" and scope["path"].endswith("completions") and not self._warned:
            self._warned = True
            log.warning("a completion request came without a multiplexed model id: Ray's proxy is not running "
                        "server.ray_serve.proxy_hook, so requests are not routed by adapter")

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER, self.replica)]}
            await send(message)

        await self.app(scope, receive, tagged)
