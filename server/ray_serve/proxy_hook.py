"""The middlewares Ray's HTTP proxy loads from RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH.

Imported inside the proxy actor: keep it free of torch and of server.api (whose package imports the engine).
"""

from starlette.middleware import Middleware

from server.ray_serve.cut_off import CutOffResponses
from server.ray_serve.model_header import ModelIdFromBody

HOOK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
HOOK = "server.ray_serve.proxy_hook:proxy_middlewares"


def proxy_middlewares() -> list[Middleware]:
    # the last one listed wraps the others: it sees whatever the proxy and the model-id peek send
    return [Middleware(ModelIdFromBody), Middleware(CutOffResponses)]
