"""Start Ray (or join a cluster), Serve with its proxy hook, and the application; `loraplex serve-ray` blocks on it."""

import logging
import os
import signal
import threading

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from server.ray_serve.app import build_application
from server.ray_serve.config import RayServeConfig, ReplicaSpec
from server.ray_serve.proxy_hook import HOOK, HOOK_ENV

log = logging.getLogger(__name__)


def start(cfg: RayServeConfig, spec: ReplicaSpec, **ray_init: object) -> DeploymentHandle:
    """Deploy and wait until every replica is up. `ray_init` goes to ray.init (num_cpus, object_store_memory, ...)."""
    if not ray.is_initialized():
        if cfg.ray_address is None:
            # Ray's processes inherit this process's environment; the proxy reads the hook from it
            os.environ[HOOK_ENV] = HOOK
        elif os.environ.get(HOOK_ENV) != HOOK:
            log.warning("joining a running Ray cluster: its proxy routes by adapter only if the cluster was "
                        "started with %s=%s in its environment", HOOK_ENV, HOOK)
        ray.init(address=cfg.ray_address, **ray_init)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    handle = serve.run(build_application(cfg, spec), name=cfg.app_name, route_prefix="/")
    log.info("serving on http://%s:%d with %s", cfg.host, cfg.port, _replicas(cfg))
    return handle


def _replicas(cfg: RayServeConfig) -> str:
    if cfg.autoscaling:
        return f"{cfg.min_replicas}-{cfg.max_replicas} replicas (autoscaling)"
    return f"{cfg.num_replicas} replicas"


def run_blocking(cfg: RayServeConfig, spec: ReplicaSpec) -> None:
    """Until SIGINT or SIGTERM; then the application and Serve stop, and Ray too when this process started it."""
    start(cfg, spec)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own SIGTERM handler
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
        log.info("stopping: replicas get up to %.0fs for in-flight requests", cfg.graceful_shutdown_s)
    finally:
        serve.shutdown()
        ray.shutdown()
