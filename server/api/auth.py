"""--api-key and --admin-key: bearer keys compared in constant time.

/v1/* (and /metrics unless --metrics-public, and the docs) need the API key; the adapter admin
routes need the admin key when one is set, else the API key.
"""

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.errors import Unauthorized

ADMIN_PATHS = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})


def bearer(scope: Scope) -> bytes:
    """The request's bearer token, b"" when none."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return b""


class ApiKeyAuth:
    def __init__(self, app: ASGIApp, api_key: str | None, admin_key: str | None = None,
                 protected: tuple[str, ...] = ("/v1",)):
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.admin_key = admin_key.encode() if admin_key else None
        self.protected = protected  # path prefixes the API key guards

    def key_for(self, path: str) -> bytes | None:
        if path in ADMIN_PATHS and self.admin_key is not None:
            return self.admin_key
        return self.key if any(_under(path, p) for p in self.protected) else None

    def allowed(self, scope: Scope) -> bool:
        key = self.key_for(scope["path"])
        return key is None or hmac.compare_digest(bearer(scope), key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.allowed(scope):
            err = Unauthorized("missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})
            await err.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")
