"""`loraplex serve` and `loraplex serve-ray`: parse the flags (server/flags.py), build the server
(server/startup.py), run it."""

import argparse
import gc
import logging
import sys

from server.flags import build_parser, engine_config, resolve_device, server_settings

log = logging.getLogger("loraplex")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("server.engine.llm_engine").setLevel(logging.INFO)  # scripts wait for its "engine ready" line


def serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _setup_logging(args.log_level)
    try:
        settings = server_settings(args)
        config = engine_config(args, resolve_device(args.device))
    except ValueError as e:
        parser.error(str(e))

    from server.api.serve import serve as run
    from server.startup import FlagError, build_server

    try:
        engine, app = build_server(settings, config)
    except FlagError as e:
        parser.error(str(e))
    engine.start()
    try:
        return run(app, settings.log_level)
    finally:
        engine.shutdown()
        gc.unfreeze()  # collectable again at exit: bindings (nanobind) report objects still alive then as leaks


def serve_ray(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _setup_logging(args.log_level)
    from server.ray_serve.config import ray_serve_config

    try:
        cfg, spec = ray_serve_config(args)
    except ValueError as e:
        parser.error(str(e))
    from server.ray_serve.launch import run_blocking

    run_blocking(cfg, spec)
    return 0


COMMANDS = {"serve": serve, "serve-ray": serve_ray}


def main(argv: list[str] | None = None) -> int:
    parser, finish = build_parser()
    args = parser.parse_args(argv)
    finish(args)
    return COMMANDS[args.command](args, parser)


if __name__ == "__main__":
    sys.exit(main())
