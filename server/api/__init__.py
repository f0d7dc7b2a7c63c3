"""The OpenAI-compatible HTTP server: FastAPI app, routes, errors, limits, metrics."""

from server.api.app import build_app
from server.api.serve import DrainingServer, serve
from server.api.settings import ServerSettings

__all__ = ["DrainingServer", "ServerSettings", "build_app", "serve"]
