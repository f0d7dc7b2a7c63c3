"""What Ray runs (replica count, autoscaling, resources, proxy address) and what each replica builds."""

import argparse
from dataclasses import dataclass

from server.api.settings import ServerSettings
from server.config import EngineConfig
from server.flags import engine_config, server_settings

DEPLOYMENT = "LoraplexReplica"


@dataclass(slots=True)
class ReplicaSpec:
    """One replica's loraplex server; every replica gets the same one."""

    settings: ServerSettings  # host/port unused: Ray's proxy is the only listener
    engine: EngineConfig
    max_adapters: int = 16  # model ids (adapters, base, routers) Ray counts as held before evicting the LRU one

    def __post_init__(self) -> None:
        if self.max_adapters < 1:
            raise ValueError("max_adapters_per_replica must be positive")


@dataclass(slots=True)
class RayServeConfig:
    num_replicas: int = 2  # fixed count; with autoscaling, the starting count
    min_replicas: int | None = None  # either bound given turns autoscaling on
    max_replicas: int | None = None
    target_ongoing_requests: float = 16.0  # autoscaling aims at this many in-flight requests per replica
    max_ongoing_requests: int = 64  # per replica; more wait in the proxy (a busy holder sends them to another)
    replica_cpus: float = 1.0  # Ray resources reserved per replica
    replica_gpus: float = 0.0
    graceful_shutdown_s: float = 30.0  # a stopping replica's in-flight requests get this long
    host: str = "127.0.0.1"  # Ray's HTTP proxy
    port: int = 8000
    app_name: str = "loraplex"
    ray_address: str | None = None  # None = start a local Ray instance

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ValueError("num_replicas must be positive")
        if self.autoscaling:
            lo, hi = self.min_replicas or 1, self.max_replicas or max(self.num_replicas, self.min_replicas or 1)
            if not 0 < lo <= hi:
                raise ValueError(f"need 0 < min_replicas <= max_replicas, got {lo} and {hi}")
            self.min_replicas, self.max_replicas = lo, hi
        if self.target_ongoing_requests <= 0 or self.max_ongoing_requests < 1:
            raise ValueError("target_ongoing_requests and max_ongoing_requests must be positive")
        if self.replica_cpus < 0 or self.replica_gpus < 0:
            raise ValueError("replica_cpus and replica_gpus must be >= 0")
        if self.graceful_shutdown_s < 0:
            raise ValueError("graceful_shutdown_s must be >= 0")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    def deployment_options(self) -> dict:
        """Keyword arguments for `Deployment.options`."""
        opts: dict = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.replica_cpus, "num_gpus": self.replica_gpus},
            "graceful_shutdown_timeout_s": self.graceful_shutdown_s,
        }
        if self.autoscaling:
            assert self.min_replicas is not None and self.max_replicas is not None
            opts["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "initial_replicas": min(max(self.num_replicas, self.min_replicas), self.max_replicas),
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


def ray_serve_config(args: argparse.Namespace) -> "tuple[RayServeConfig, ReplicaSpec]":
    """`serve-ray` flags -> what Ray runs and what each replica builds. ValueError names a bad flag."""
    if args.allowed_adapter_root or args.enable_adapter_admin:
        raise ValueError("--allowed-adapter-root / --enable-adapter-admin: a run-time adapter load or unload would "
                         "reach one replica only; register adapters at start with --adapter or --adapter-dir")
    device = args.device
    if device == "auto":  # the replicas' hardware, not this process's: a replica sees a GPU only if it asks for one
        device = "cuda" if args.replica_gpus > 0 else "cpu"
    cfg = RayServeConfig(
        num_replicas=args.num_replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests, max_ongoing_requests=args.max_ongoing_requests,
        replica_cpus=args.replica_cpus, replica_gpus=args.replica_gpus, graceful_shutdown_s=args.drain_timeout,
        host=args.host, port=args.port, app_name=args.app_name, ray_address=args.ray_address,
    )
    spec = ReplicaSpec(server_settings(args), engine_config(args, device), args.max_adapters_per_replica)
    return cfg, spec
