"""The Host header must name this server (DNS rebinding: a web page whose name resolves to 127.0.0.1
must not reach a keyless loopback server). Loopback binds accept loopback names only unless
--allowed-host says otherwise."""

from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.errors import BadRequest


def host_name(value: str) -> str:
    """The name in a Host header, without its port ("[::1]:8000" -> "::1")."""
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class TrustedHost:
    def __init__(self, app: ASGIApp, allowed: list[str]):
        self.app = app
        self.any = "*" in allowed
        self.allowed = {host_name(h).lower() for h in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.any:
            raw = next((v for k, v in scope["headers"] if k == b"host"), b"")
            if host_name(raw.decode("latin-1")).lower() not in self.allowed:
                err = BadRequest("the Host header does not name this server (see --allowed-host)", "host",
                                 code="invalid_host")
                await err.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
