"""Scale-out on Ray Serve: N loraplex replicas behind Ray's HTTP proxy, requests routed by adapter.

- `proxy_hook` (loaded by Ray's proxy): `model_header` copies the body's `model` into the header Ray's
  model multiplexing routes by; `cut_off` finishes responses a dead replica left open with an error.
- `replica`: the deployment, one engine + the loraplex FastAPI app per replica; `replica_tag` holds the
  request's model through `@serve.multiplexed` (`adapter_lease`) and names the replica in
  `x-loraplex-replica`.
- `config`, `app`, `launch`: options, the application (`app_builder` for `serve run`), start-up.

Only the proxy-side names are imported here: the proxy imports this package and must not load torch.
"""

from server.ray_serve.proxy_hook import HOOK, HOOK_ENV, proxy_middlewares

__all__ = ["HOOK", "HOOK_ENV", "proxy_middlewares"]
