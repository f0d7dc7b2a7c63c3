"""The Ray Serve deployment: one loraplex server (engine + FastAPI app) per replica.

The app is the one `loraplex serve` runs, built by the same code; Ray's proxy reaches it through
`@serve.ingress`. The multiplexed loader is made per replica so --max-adapters-per-replica can size it.
"""

import logging

from ray import serve

from server.ray_serve.adapter_lease import AdapterLease, lease
from server.ray_serve.config import DEPLOYMENT, ReplicaSpec
from server.ray_serve.replica_tag import ReplicaTag


@serve.deployment(name=DEPLOYMENT)
@serve.ingress()
class LoraplexReplica:
    def __init__(self, spec: ReplicaSpec):
        from server.startup import build_server  # torch and the model load here, in the replica

        logging.basicConfig(level=spec.settings.log_level.upper())
        logging.getLogger("server").setLevel(spec.settings.log_level.upper())
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.engine, self._loraplex_app = build_server(spec.settings, spec.engine)
        self.engine.start()
        registry = self.engine.registry

        async def load(model_id: str) -> AdapterLease:
            return await lease(registry, model_id)

        self.hold = serve.multiplexed(max_num_models_per_replica=spec.max_adapters)(load)

    def __serve_build_asgi_app__(self):
        from server.api.app import protected_paths
        from server.api.auth import ApiKeyAuth

        ctx = self._loraplex_app.state.loraplex
        s = ctx.settings
        auth = ApiKeyAuth(self._loraplex_app, s.api_key, s.admin_key, protected_paths(s))
        self._loraplex_app.add_middleware(
            ReplicaTag, replica=self.replica_id, model_id=serve.get_multiplexed_model_id,
            known=lambda name: ctx.models.reserved(name) or name in ctx.engine.registry, hold=self.hold,
            authorized=auth.allowed,
        )
        return self._loraplex_app

    def __del__(self) -> None:
        self.engine.shutdown()
