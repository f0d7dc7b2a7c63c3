"""What every route needs, built once per app."""

from dataclasses import dataclass

from server.api.inputs import Limits
from server.api.metrics import Metrics
from server.api.models import ModelResolver
from server.api.routing import Routers
from server.api.settings import ServerSettings
from server.api.state import ServerState
from server.engine.async_engine import AsyncEngine
from server.structured import GrammarCompiler


@dataclass(slots=True)
class ServerContext:
    engine: AsyncEngine
    settings: ServerSettings
    state: ServerState
    metrics: Metrics
    models: ModelResolver
    limits: Limits
    routers: Routers
    grammars: GrammarCompiler  # structured outputs and tool calls: compiled grammars, cached
