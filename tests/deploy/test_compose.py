"""docker-compose.yml parses and everything it and the Dockerfile reference exists (no Docker engine here)."""

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.files import COMPOSE, DASHBOARD, DEPLOY, DOCKERFILE, REPO, dockerfile_env, dockerfile_instructions

_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default}, with VAR unset (the defaults are what the repository ships)."""
    return _VAR.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def bind_mounts(service: dict) -> list[tuple[Path, str]]:
    """(host path, container path) of each bind mount; named volumes left out."""
    out = []
    for spec in service.get("volumes", []):
        source, target = interpolate(spec).split(":")[:2]
        if source.startswith((".", "/")):
            out.append(((COMPOSE.parent / source).resolve(), target))
    return out


def test_services_and_named_volumes(compose):
    assert set(compose["services"]) == {"loraplex", "prometheus", "grafana"}
    declared = set(compose.get("volumes") or {})
    for service in compose["services"].values():
        for spec in service.get("volumes", []):
            source = interpolate(spec).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"named volume {source} is not declared"


def test_build_context_and_dockerfile_exist(compose):
    build = compose["services"]["loraplex"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    assert set(build["args"]) <= {a.split("=")[0] for w, a in dockerfile_instructions() if w == "ARG"}


def test_every_bind_mount_exists(compose):
    mounts = [m for s in compose["services"].values() for m in bind_mounts(s)]
    assert len(mounts) == 4
    for host, _ in mounts:
        assert host.exists(), host
    adapters = dict((t, h) for h, t in bind_mounts(compose["services"]["loraplex"]))["/adapters"]
    assert any((d / "adapter_config.json").is_file() for d in adapters.iterdir())


def test_dockerfile_copies_only_existing_paths():
    copies = [a for w, a in dockerfile_instructions() if w == "COPY"]
    assert copies
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for args in copies:
        for source in [s for s in args.split()[:-1] if not s.startswith("--")]:
            assert (REPO / source).exists(), f"COPY {source}: not in the build context"
            assert f"!{source}" in ignore or f"!{source}/**" in ignore, f"{source} is excluded by the dockerignore"


def test_dockerfile_runs_serve_as_non_root_with_env_config():
    instructions = dockerfile_instructions()
    words = [w for w, _ in instructions]
    user = next(a for w, a in reversed(instructions) if w == "USER")
    assert user.split(":")[0] not in ("root", "0")
    assert "STOPSIGNAL" in words and "USER" in words
    assert any("healthcheck.py" in a for w, a in instructions if w == "HEALTHCHECK")
    assert any("docker-entrypoint.sh" in a for w, a in instructions if w == "ENTRYPOINT")
    assert any("install.sh" in a for w, a in instructions if w == "RUN")
    volumes = json.loads(next(a for w, a in instructions if w == "VOLUME"))
    env = dockerfile_env()
    assert env["LORAPLEX_HOST"] == "0.0.0.0"
    assert {env["LORAPLEX_ADAPTER_DIR"], env["LORAPLEX_CACHE_DIR"]} == set(volumes)
    assert env["LORAPLEX_PORT"] == next(a for w, a in instructions if w == "EXPOSE")


def test_prometheus_scrapes_the_loraplex_service(compose):
    mounts = {t: h for h, t in bind_mounts(compose["services"]["prometheus"])}
    config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    assert "--config.file=/etc/prometheus/prometheus.yml" in compose["services"]["prometheus"]["command"]
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    port = dockerfile_env()["LORAPLEX_PORT"]
    assert job["static_configs"][0]["targets"] == [f"loraplex:{port}"]


def test_grafana_provisioning_points_at_the_mounted_dashboard(compose):
    mounts = {t: h for h, t in bind_mounts(compose["services"]["grafana"])}
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "loraplex.yml").read_text())["providers"]
    dashboards_dir = provider["options"]["path"]
    assert mounts[dashboards_dir] == DASHBOARD.parent
    dashboard = json.loads(DASHBOARD.read_text())
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/{DASHBOARD.name}"
    uids = {
        t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])
    } | {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert uids == {datasource["uid"]}


def test_stop_grace_outlasts_the_drain(compose):
    service = compose["services"]["loraplex"]
    drain = float(service["environment"]["LORAPLEX_DRAIN_TIMEOUT"])
    grace = service["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > drain
