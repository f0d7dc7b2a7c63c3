"""--api-key: every /v1/* request must carry `Authorization: Bearer KEY` (compared in constant time)."""

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.errors import Unauthorized


class ApiKeyAuth:
    def __init__(self, app: ASGIApp, api_key: str, prefix: str = "/v1"):
        self.app = app
        self.key = api_key.encode()
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _under(scope["path"], self.prefix) and not self._allowed(scope):
            err = Unauthorized("missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})
            await err.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
                break
        return hmac.compare_digest(given, self.key)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")
