"""deploy/k8s validates against the Kubernetes JSON schemas (kubernetes-validate bundles them: offline)."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy.files import K8S

K8S_VERSION = "1.30.0"  # the oldest release we promise; also checked against the validator's latest
MANIFESTS = sorted(K8S.glob("*.yaml"))


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def resources() -> dict[str, dict]:
    return {d["kind"]: d for p in MANIFESTS for d in documents(p) if d["kind"] != "PersistentVolumeClaim"}


@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(path, version):
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_validator_rejects_a_bad_probe():
    """The check has teeth: a wrong type and an unknown field both fail."""
    deployment = resources()["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["periodSeconds"] = "five"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    container["readinessProbe"]["periodSeconds"] = 5
    container["readinessProbe"]["initialDelay"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_service_monitor_selects_the_service():
    """No schema ships for the Prometheus Operator's CRD: check that it points at the Service's port."""
    (monitor,) = documents(K8S / "optional" / "servicemonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    service = resources()["Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}


def test_deployment_wiring():
    r = resources()
    pod = r["Deployment"]["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert env["LORAPLEX_HOST"] == "0.0.0.0" and int(env["LORAPLEX_PORT"]) == port
    # probes on /health
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # graceful termination: preStop sleep + drain fit inside the grace period; liveness never fires mid-drain
    drain = float(env["LORAPLEX_DRAIN_TIMEOUT"])
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] > pre_stop + drain
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > drain
    # requests and limits
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] != 0
    # volumes: adapters and cache mounted where the env says, backed by the PVCs
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["adapters"] == env["LORAPLEX_ADAPTER_DIR"] and mounts["cache"] == env["LORAPLEX_CACHE_DIR"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}
    pvcs = {d["metadata"]["name"] for d in documents(K8S / "pvc.yaml")}
    assert set(claims.values()) == pvcs and set(claims) == set(mounts)
    # scrape annotations and the Service reach this pod
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == port
    assert ann["prometheus.io/path"] == "/metrics"
    labels = pod["metadata"]["labels"]
    assert r["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert r["Service"]["spec"]["selector"].items() <= labels.items()
    assert r["Service"]["spec"]["ports"][0]["targetPort"] == "http"
