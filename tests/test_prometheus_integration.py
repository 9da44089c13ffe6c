"""A real Prometheus scraping a real server: the compose scrape config, the alert rules and the dashboard
queries work against what `halo serve` actually exports.

Starts `halo serve` on 127.0.0.1 (ephemeral ports) and Debian's `prometheus` binary with
docker/prometheus/prometheus.yml, its `halo` target rewritten to the server and the scrape interval
shortened, sends REST and gRPC requests, and reads the results back through Prometheus' HTTP API.
The same server also answers the images' HEALTHCHECK command.
"""

from __future__ import annotations

import json
import math
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from conftest import REFERENCE_DIR

from cli.files import load_keypoints
from tools.client import GrpcClient, HaloError, RestClient

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "docker" / "prometheus"
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "halo.json"
SHIPPED_BASE = ROOT / "models" / "checkpoints" / "halo_base.safetensors"
SAMPLE_KEYPOINTS = ROOT / "models" / "assets" / "sample_keypoints.json"
START_BUDGET_S = 240  # model load + warm-up on a busy 2-core machine
SCRAPE_INTERVAL = "1s"
ADAPTER_RULES = ROOT / "k8s" / "prometheus-adapter" / "configmap.yaml"
POD_LABELS = {"namespace": "halo-test", "pod": "halo-0"}

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    """Poll ``condition`` every ``interval_s`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = condition()
        except (httpx.HTTPError, OSError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _checkpoint_args() -> list[str]:
    if SHIPPED_BASE.is_file():
        return []
    published = REFERENCE_DIR / "model_best.pt"
    if published.is_file():
        return ["--base-checkpoint", str(published)]
    pytest.skip(f"no base checkpoint: neither {SHIPPED_BASE.name} is shipped nor {published} present")


def _keypoints() -> np.ndarray:
    """(21,3) metres, MANO order: the project's sample hand."""
    if not SAMPLE_KEYPOINTS.is_file():
        pytest.skip(f"sample hand {SAMPLE_KEYPOINTS.name} is missing")
    return load_keypoints(SAMPLE_KEYPOINTS)[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """`halo serve` on 127.0.0.1; yields its bound ports once /readyz answers 200."""
    halo = Path(sys.executable).parent / "halo"
    command = [str(halo), "serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
               "--log-format", "json", "--max-resolution", "128", "--grace-period-s", "5", *_checkpoint_args()]
    log_path = tmp_path_factory.mktemp("halo") / "server.log"
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        with log_path.open("w") as log:
            for line in process.stderr:
                log.write(line)
                log.flush()
                lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        def listening() -> dict[str, int] | None:
            if process.poll() is not None:
                pytest.fail(f"halo serve exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                event = json.loads(lines.get(timeout=0.5))
            except (queue.Empty, json.JSONDecodeError):
                return None
            return event if event.get("message") == "listening" else None

        event = _wait_for(listening, START_BUDGET_S, "the server's 'listening' log line")
        ports = {"http": int(event["http_port"]), "grpc": int(event["grpc_port"])}
        readyz = f"http://127.0.0.1:{ports['http']}/readyz"
        _wait_for(lambda: httpx.get(readyz, timeout=5).status_code == 200, START_BUDGET_S, "/readyz")
        yield ports
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def prometheus(server: dict[str, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's prometheus with the compose config, scraping the server; yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus missing: run scripts/setup.sh --dev (Debian package `prometheus`)")
    workdir = tmp_path_factory.mktemp("prometheus")
    port = _free_port()
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = SCRAPE_INTERVAL
    config["global"]["evaluation_interval"] = SCRAPE_INTERVAL
    loopback = {"halo": f"127.0.0.1:{server['http']}", "prometheus": f"127.0.0.1:{port}"}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [loopback[job["job_name"]]]}]
    # The labels a ServiceMonitor scrape adds in Kubernetes, so the prometheus-adapter rule can be run here.
    halo_job = next(job for job in config["scrape_configs"] if job["job_name"] == "halo")
    halo_job["static_configs"][0]["labels"] = POD_LABELS
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    for rule_file in config["rule_files"]:
        shutil.copy(PROMETHEUS_DIR / rule_file, workdir / rule_file)

    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}:\n{(workdir / 'prometheus.log').read_text()}")
            return httpx.get(f"{url}/-/ready", timeout=5).status_code == 200

        _wait_for(ready, 60, "prometheus /-/ready")
        _wait_for(lambda: query(url, 'up{job="halo"}'), 60, "a first scrape of the server")
        yield url
    finally:
        _stop(process)
        log.close()


def query(url: str, promql: str) -> list[dict]:
    """Instant query through Prometheus' HTTP API -> its result vector."""
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (promql, body)
    return body["data"]["result"]


def _value(url: str, promql: str) -> float | None:
    """The single value of a one-element instant query, or None while it has no data."""
    result = query(url, promql)
    return float(result[0]["value"][1]) if len(result) == 1 else None


@pytest.fixture(scope="module")
def traffic(server: dict[str, int], prometheus: str) -> dict[str, int]:
    """Requests sent in two rounds with a scrape between them, so rate() has two points per series."""
    kps = _keypoints()
    points = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    sent = {"mesh_rest": 0, "mesh_grpc": 0, "occupancy_rest": 0, "invalid_rest": 0}
    with RestClient(f"http://127.0.0.1:{server['http']}") as rest, \
            GrpcClient(f"127.0.0.1:{server['grpc']}") as grpc_client:
        def one_round(meshes: int) -> None:
            for _ in range(meshes):
                assert len(rest.mesh(kps, resolution=64).faces) > 0
                sent["mesh_rest"] += 1
            assert len(grpc_client.mesh(kps, resolution=64).faces) > 0
            sent["mesh_grpc"] += 1
            assert rest.occupancy(kps, points).shape == (2,)
            sent["occupancy_rest"] += 1
            with pytest.raises(HaloError) as refused:
                rest.mesh(np.zeros((21, 3)), resolution=64)
            assert refused.value.status == 422
            sent["invalid_rest"] += 1

        one_round(meshes=1)
        _wait_for(lambda: query(prometheus, 'halo_requests_total{endpoint="mesh", protocol="grpc"}'),
                  60, "the first round in Prometheus")
        one_round(meshes=3)

    expected = f'sum(halo_requests_total{{endpoint="mesh", protocol="rest", status="200"}}) == {sent["mesh_rest"]}'
    _wait_for(lambda: query(prometheus, expected), 60, "the second round in Prometheus")
    # Two more scrapes so the last increments sit between two samples inside every rate() window.
    time.sleep(2.5)
    return sent


def test_target_is_up(prometheus: str, server: dict[str, int]) -> None:
    (series,) = query(prometheus, 'up{job="halo"}')
    assert series["metric"]["instance"] == f"127.0.0.1:{server['http']}"
    assert series["value"][1] == "1"
    targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    (halo,) = [t for t in targets if t["labels"]["job"] == "halo"]
    assert halo["health"] == "up" and halo["lastError"] == ""
    assert halo["scrapeUrl"] == f"http://127.0.0.1:{server['http']}/metrics"


def test_counters_match_the_requests_sent(prometheus: str, traffic: dict[str, int]) -> None:
    def count(selector: str) -> float | None:
        return _value(prometheus, f"sum(halo_requests_total{{{selector}}})")

    assert count('endpoint="mesh", protocol="rest", status="200"') == traffic["mesh_rest"]
    assert count('endpoint="mesh", protocol="grpc", status="OK"') == traffic["mesh_grpc"]
    assert count('endpoint="occupancy", protocol="rest", status="200"') == traffic["occupancy_rest"]
    assert count('endpoint="mesh", protocol="rest", status="422"') == traffic["invalid_rest"]
    meshes = _value(prometheus, 'sum(halo_meshes_total{resolution="64"})')
    assert meshes is not None and meshes >= traffic["mesh_rest"] + traffic["mesh_grpc"]


def test_rate_of_requests_is_positive(prometheus: str, traffic: dict[str, int]) -> None:
    rates = query(prometheus, "sum by (endpoint, protocol) (rate(halo_requests_total[1m]))")
    by_key = {(r["metric"]["endpoint"], r["metric"]["protocol"]): float(r["value"][1]) for r in rates}
    for key in (("mesh", "rest"), ("mesh", "grpc"), ("occupancy", "rest")):
        assert by_key.get(key, 0.0) > 0, f"no rate for {key}: {by_key}"
    # The second round added 3 successful REST meshes after the first was scraped.
    increase = _value(prometheus, 'sum(increase(halo_requests_total{endpoint="mesh", protocol="rest",'
                                  ' status="200"}[1m]))')
    assert increase is not None and increase > 0


def test_latency_quantiles_come_from_the_histogram(prometheus: str, traffic: dict[str, int]) -> None:
    for q in (0.5, 0.99):
        value = _value(prometheus, f'histogram_quantile({q}, sum by (le) '
                                   f'(rate(halo_request_duration_seconds_bucket{{endpoint="mesh"}}[1m])))')
        assert value is not None and math.isfinite(value) and 0 < value <= 120, (q, value)
    stages = query(prometheus, "sum by (stage) (rate(halo_stage_duration_seconds_count[1m]))")
    active = {r["metric"]["stage"] for r in stages if float(r["value"][1]) > 0}
    assert {"canonicalize", "occupancy", "marching_cubes"} <= active


def test_every_dashboard_query_runs_and_request_panels_have_data(prometheus: str, traffic: dict[str, int]) -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    empty = []
    for panel in panels:
        for target in panel["targets"]:
            result = query(prometheus, target["expr"].replace("$__rate_interval", "1m"))
            if not result:
                empty.append(f"{panel['title']} / {target['refId']}")
    must_have_data = {"Requests per second / A", "Request latency / A", "Request latency / C",
                      "Queue depth and in-flight requests / A", "Batch size / A", "Time per pipeline stage / A",
                      "Errors, refusals and drops / A", "Meshes and decoder work / A", "Loaded models / A",
                      "Instances up and ready / A", "Instances up and ready / B"}
    assert not must_have_data & set(empty), f"dashboard queries without data: {sorted(must_have_data & set(empty))}"


def _rules(url: str) -> list[dict]:
    """Every rule Prometheus has loaded, with its health, state and last evaluation time."""
    groups = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_are_loaded_healthy_and_quiet(prometheus: str, traffic: dict[str, int]) -> None:
    expected = {r["alert"] for g in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
                for r in g["rules"]}
    assert {rule["name"] for rule in _rules(prometheus)} == expected
    # Go's zero time means "not evaluated yet".
    _wait_for(lambda: all(not r["lastEvaluation"].startswith("0001") for r in _rules(prometheus)), 30,
              "a first evaluation of every rule")
    for rule in _rules(prometheus):
        assert rule["health"] == "ok", rule
        # A healthy, lightly loaded server: nothing may be pending or firing.
        assert rule["state"] == "inactive", rule


def test_prometheus_adapter_rule_yields_the_per_pod_queue_metric(prometheus: str, traffic: dict[str, int]) -> None:
    """The adapter's series discovery and metrics query, templated as it templates them for one pod."""
    config = yaml.safe_load(yaml.safe_load(ADAPTER_RULES.read_text())["data"]["config.yaml"])
    (rule,) = config["rules"]
    series = httpx.get(f"{prometheus}/api/v1/series", params={"match[]": rule["seriesQuery"]}, timeout=10).json()
    assert [s["__name__"] for s in series["data"]] == ["halo_queue_depth"]
    matchers = ",".join(f'{key}="{value}"' for key, value in POD_LABELS.items())
    promql = (rule["metricsQuery"].replace("<<.Series>>", "halo_queue_depth")
              .replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", "pod"))
    (sample,) = query(prometheus, promql)
    assert sample["metric"] == {"pod": POD_LABELS["pod"]}
    assert float(sample["value"][1]) >= 0


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_image_health_check_command_passes_against_the_server(server: dict[str, int], dockerfile: str) -> None:
    """The HEALTHCHECK one-liner of each image, pointed at this server, exits 0; at a closed port it fails."""
    text = (ROOT / "docker" / dockerfile).read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("HEALTHCHECK")]
    command = json.loads(line[line.index("CMD") + 3:])
    assert command[0] == "python"

    def run(port: int) -> int:
        argv = [sys.executable, *(arg.replace(":8000/", f":{port}/") for arg in command[1:])]
        return subprocess.run(argv, capture_output=True, timeout=30).returncode

    assert run(server["http"]) == 0
    assert run(_free_port()) != 0
