"""The Ray Serve application: `loraplex serve-ray` binds it, and so does `serve run` through app_builder."""

from pathlib import Path

from ray.serve import Application

from server.ray_serve.config import RayServeConfig, ReplicaSpec
from server.ray_serve.replica import LoraplexReplica


def build_application(cfg: RayServeConfig, spec: ReplicaSpec) -> Application:
    return LoraplexReplica.options(**cfg.deployment_options()).bind(spec)


def _argv(args: dict[str, object]) -> list[str]:
    """{"pool-mb": 64, "adapter-dir": ["a", "b"]} -> ["--pool-mb", "64", "--adapter-dir", "a", "--adapter-dir", "b"]"""
    argv: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        for v in value if isinstance(value, list) else [value]:
            argv += [flag, str(v)]
    return argv


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _anchor_paths(ns) -> None:
    """Paths relative to where `serve run` started, not to the replicas' working directory."""
    ns.adapter_dir = [_absolute(p) for p in ns.adapter_dir]
    ns.adapter = [f"{n}={_absolute(p)}" if sep and p else a for a in ns.adapter for n, sep, p in [a.partition("=")]]
    ns.router = [
        f"{n}=rules:{_absolute(k.removeprefix('rules:'))}" if k.startswith("rules:") else a
        for a in ns.router for n, _, k in [a.partition("=")]
    ]
    if ns.model and Path(ns.model).expanduser().exists():
        ns.model = _absolute(ns.model)


def parse_args(args: dict[str, object]) -> tuple[RayServeConfig, ReplicaSpec]:
    """`serve-ray` flags without their dashes, as a dict, -> what Ray runs and what each replica builds."""
    from server.flags import build_parser
    from server.ray_serve.config import ray_serve_config

    parser, finish = build_parser()
    ns = parser.parse_args(["serve-ray", *_argv(args)])
    finish(ns)
    _anchor_paths(ns)
    return ray_serve_config(ns)


def app_builder(args: dict[str, object]) -> Application:
    """`serve run` entry point: `args` from the config file's `args:` (or `key=value` after `serve run IMPORT_PATH`).
    host, port and ray-address are ignored: `serve run` and the config's http_options own those."""
    return build_application(*parse_args(args))
