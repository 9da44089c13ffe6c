"""The CPU image, built and run for real with podman (`make image-test`, which builds it first).

The container runs as an operator would lock it down: read-only root, /tmp as tmpfs, uid 10001, every
capability dropped, no new privileges, ports published on 127.0.0.1 only. The checks call it over REST
and gRPC through the published ports, let Debian's Prometheus on the host scrape its /metrics, run its
HEALTHCHECK, and stop it with SIGTERM while a request is in flight; last, `podman-compose up` brings up
the compose file's `halo` service on the same image. Marked `image`: plain `pytest`
deselects these (pyproject.toml); scripts/image_test.sh selects them after building the image.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import trimesh
import yaml

from service.codecs import mesh_to_packed
from service.proto_gen.halo.v1 import halo_pb2
from tests.test_prometheus_integration import PROMETHEUS_DIR, _free_port, _keypoints, _stop, _wait_for, query
from tools.client import GrpcClient, RestClient

pytestmark = pytest.mark.image

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("HALO_IMAGE", "localhost/halo-serve:cpu")
CONTAINER = f"halo-image-test-{os.getpid()}"
START_BUDGET_S = 300  # model load + warm-up inside the container on a busy 2-core machine
SERVER_UID = 10001


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run podman (CONTAINERS_CONF from the environment, as scripts/image_test.sh sets it)."""
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: run `make image-test`, which installs it")
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def _inspect() -> dict:
    return json.loads(podman("container", "inspect", CONTAINER).stdout)[0]


def _published(port: int) -> str:
    """host:port that the container's ``port`` is published on."""
    address = podman("port", CONTAINER, f"{port}/tcp").stdout.strip()
    assert address.startswith("127.0.0.1:"), f"published beyond loopback: {address}"
    return address


@pytest.fixture(scope="module")
def image() -> dict:
    result = podman("image", "inspect", IMAGE, check=False)
    if result.returncode != 0:
        pytest.fail(f"image {IMAGE} is not built: run `make image-test`")
    return json.loads(result.stdout)[0]


@pytest.fixture(scope="module")
def container(image: dict) -> Iterator[dict[str, str]]:
    """The locked-down container, once /readyz answers; yields its published REST and gRPC addresses."""
    podman("run", "--detach", "--name", CONTAINER, "--read-only", "--tmpfs", "/tmp", "--user",
           f"{SERVER_UID}:{SERVER_UID}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
           "--publish", "127.0.0.1::8000", "--publish", "127.0.0.1::50051", "--stop-timeout", "60", IMAGE)
    try:
        addresses = {"http": f"http://{_published(8000)}", "grpc": _published(50051)}

        def ready() -> bool:
            if not _inspect()["State"]["Running"]:
                pytest.fail("container exited:\n" + podman("logs", CONTAINER, check=False).stderr)
            return httpx.get(f"{addresses['http']}/readyz", timeout=5).status_code == 200

        _wait_for(ready, START_BUDGET_S, "/readyz of the container")
        yield addresses
    finally:
        logs = podman("logs", CONTAINER, check=False)
        print(f"--- container log ---\n{logs.stdout}{logs.stderr}")
        podman("rm", "--force", "--time", "5", CONTAINER, check=False)


@pytest.fixture(scope="module")
def sent() -> dict[str, int]:
    """Requests the checks below made, by (endpoint, protocol, status), for the Prometheus check."""
    return {}


def _count(sent: dict, endpoint: str, protocol: str, status: str) -> None:
    key = (endpoint, protocol, status)
    sent[key] = sent.get(key, 0) + 1


def _mug() -> trimesh.Trimesh:
    """A closed 8 cm tall, 3.5 cm radius cylinder: a mug-sized object in metres."""
    return trimesh.creation.cylinder(radius=0.035, height=0.08, sections=48)


def test_image_carries_the_cpu_build_of_pytorch_and_runs_as_uid_10001(image: dict) -> None:
    config = image["Config"]
    assert config["User"] == f"{SERVER_UID}:{SERVER_UID}"
    assert image["Healthcheck"]["Test"][0] == "CMD", "the docker image format keeps the HEALTHCHECK"
    probe = podman("run", "--rm", "--read-only", "--cap-drop", "ALL", IMAGE, "python", "-c",
                   "import os, torch; print(os.getuid(), torch.__version__, torch.version.cuda)")
    assert probe.stdout.split() == [str(SERVER_UID), "2.13.0+cpu", "None"]
    print(f"image size: {image['Size'] / 1e9:.2f} GB")
    assert image["Size"] < 3e9, "the CUDA build of PyTorch would make the CPU image ~5.7 GB"


def test_container_is_locked_down(container: dict[str, str]) -> None:
    host_config = _inspect()["HostConfig"]
    assert host_config["ReadonlyRootfs"] is True
    status = podman("exec", CONTAINER, "python", "-c",
                    "import os; print(os.getuid(), os.getgid()); print(open('/proc/1/status').read())").stdout
    ids, *lines = status.splitlines()
    assert ids.split() == [str(SERVER_UID), str(SERVER_UID)]
    fields = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0, "all capabilities dropped"
    assert fields["NoNewPrivs"].strip() == "1"
    writes = podman("exec", CONTAINER, "python", "-c", (
        "import errno, pathlib\n"
        "pathlib.Path('/tmp/probe').write_text('x')\n"
        "for path in ('/app/probe', '/probe'):\n"
        "    try:\n        pathlib.Path(path).write_text('x')\n"
        "    except OSError as error:\n        print(errno.errorcode[error.errno])\n"))
    assert writes.stdout.split() == ["EROFS", "EROFS"], "/tmp is the only writable place"


def test_rest_mesh_as_json_and_glb(container: dict[str, str], sent: dict) -> None:
    keypoints = _keypoints()
    with RestClient(container["http"]) as client:
        mesh = client.mesh(keypoints, resolution=64)
        _count(sent, "mesh", "rest", "200")
        assert mesh.is_watertight and 150e-6 < mesh.volume < 500e-6, mesh.volume
        response = client.http.post("/mesh", json={"keypoints": keypoints.tolist(), "resolution": 64},
                                    headers={"Accept": "model/gltf-binary"})
        _count(sent, "mesh", "rest", str(response.status_code))
    assert response.status_code == 200 and response.headers["content-type"] == "model/gltf-binary"
    assert response.content[:4] == b"glTF"
    glb = trimesh.load(io.BytesIO(response.content), file_type="glb", force="mesh")
    assert len(glb.faces) == len(mesh.faces)


def test_grpc_generate_mesh_and_grasps(container: dict[str, str], sent: dict) -> None:
    keypoints = _keypoints()
    with GrpcClient(container["grpc"], timeout=240) as client:
        (mesh,) = client.meshes(keypoints[None], resolution=64)
        _count(sent, "mesh", "grpc", "OK")
        assert mesh.is_watertight
        vertices, faces = mesh_to_packed(_mug())
        request = halo_pb2.GenerateGraspsRequest(object=halo_pb2.Mesh(vertices=vertices, faces=faces),
                                                 num_samples=2, seed=0, refine=True, resolution=64, physics=True)
        response = client.stub.GenerateGrasps(request, timeout=240)
        _count(sent, "grasps", "grpc", "OK")
    assert len(response.grasps) == 2
    for grasp in response.grasps:
        assert len(grasp.keypoints) == 63 and np.isfinite(grasp.keypoints).all()
        assert len(grasp.mesh.faces) > 0
        # The physics check (MuJoCo, and CoACD for the mug's pieces) runs in the read-only, unprivileged container.
        assert {"stable", "sim_displacement_cm", "sim_displacement_worst_cm"} <= set(grasp.metrics.values)
        assert 0 <= grasp.metrics.values["sim_displacement_cm"] < 200


def test_prometheus_on_the_host_scrapes_the_container(
    container: dict[str, str], sent: dict, tmp_path: Path
) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus missing: run scripts/setup.sh --dev (Debian package `prometheus`)")
    assert sent, "runs after the request checks above"
    target = container["http"].removeprefix("http://")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["rule_files"] = []
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] == "halo"]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "prometheus.log").open("w") as log:
        process = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                    f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                   cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for(lambda: query(url, 'up{job="halo"} == 1'), 60, "Prometheus scraping the container")
            promql = "sum by (endpoint, protocol, status) (halo_requests_total)"
            result = _wait_for(lambda: query(url, promql), 30, "halo_requests_total in Prometheus")
        finally:
            _stop(process)
    scraped = {(r["metric"]["endpoint"], r["metric"]["protocol"], r["metric"]["status"]): int(float(r["value"][1]))
               for r in result}
    assert scraped == sent


def test_healthcheck_turns_healthy(container: dict[str, str]) -> None:
    result = podman("healthcheck", "run", CONTAINER, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _inspect()["State"]["Health"]["Status"] == "healthy"


def test_sigterm_during_a_request_lets_it_finish_and_the_container_exits_0(container: dict[str, str]) -> None:
    # Enough work (several seconds) that the request is surely still running when SIGTERM arrives:
    # a small grasp request now finishes within one poll of the metrics.
    samples = 32
    body = {"object": {"vertices": _mug().vertices.tolist(), "faces": _mug().faces.tolist()},
            "num_samples": samples, "seed": 1, "resolution": 128}
    outcome: dict = {}

    def grasp_request() -> None:
        try:
            outcome["response"] = httpx.post(f"{container['http']}/grasps", json=body, timeout=240)
        except httpx.HTTPError as error:
            outcome["error"] = error

    caller = threading.Thread(target=grasp_request)
    caller.start()

    def in_flight() -> bool:
        metrics = httpx.get(f"{container['http']}/metrics", timeout=5).text
        return any(line.startswith("halo_inflight_requests ") and float(line.split()[1]) >= 1
                   for line in metrics.splitlines())

    _wait_for(in_flight, 30, "the grasp request in flight", interval_s=0.05)
    started = time.monotonic()
    stop = podman("stop", "--time", "60", CONTAINER, timeout=90)
    stopped_after = time.monotonic() - started
    caller.join(120)
    assert "error" not in outcome, outcome.get("error")
    response = outcome["response"]
    assert response.status_code == 200, response.text
    assert len(response.json()["grasps"]) == samples
    state = _inspect()["State"]
    assert state["ExitCode"] == 0 and not state["OOMKilled"], (stop.stdout, stop.stderr, state)
    print(f"podman stop returned after {stopped_after:.1f} s with the request in flight")


def test_docker_compose_up_serves_the_halo_service() -> None:
    """`docker compose up` as podman-compose runs it: the `halo` service of docker-compose.yml (the image
    built above; Prometheus and Grafana are left out, their images cannot be pulled here)."""
    compose = shutil.which("podman-compose")
    if compose is None:
        pytest.fail("podman-compose is missing: run `make image-test`, which installs it")
    project = f"halo-image-test-{os.getpid()}"

    def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        result = subprocess.run([compose, "--project-name", project, "--file", str(ROOT / "docker-compose.yml"),
                                 *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        assert result.returncode == 0, f"podman-compose {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result

    run("up", "--detach", "--no-build", "halo")
    try:
        (name,) = podman("ps", "--all", "--filter", f"label=io.podman.compose.project={project}",
                         "--format", "{{.Names}}").stdout.split()
        (config,) = json.loads(podman("container", "inspect", name).stdout)
        assert config["HostConfig"]["ReadonlyRootfs"] is True and "/tmp" in config["HostConfig"]["Tmpfs"]
        # No systemd timers here to run the HEALTHCHECK periodically: run it as the timer would.
        _wait_for(lambda: podman("healthcheck", "run", name, check=False).returncode == 0, START_BUDGET_S,
                  "the compose service's HEALTHCHECK")
        (config,) = json.loads(podman("container", "inspect", name).stdout)
        assert config["State"]["Health"]["Status"] == "healthy"
        _wait_for(lambda: httpx.get("http://127.0.0.1:8000/readyz", timeout=5).status_code == 200, START_BUDGET_S,
                  "/readyz on the compose port 8000")
        keypoints = _keypoints()
        with RestClient("http://127.0.0.1:8000") as rest, GrpcClient("127.0.0.1:50051", timeout=120) as grpc_client:
            assert rest.mesh(keypoints, resolution=64).is_watertight
            assert grpc_client.mesh(keypoints, resolution=64).is_watertight
    finally:
        # podman-compose does not read stop_grace_period: give the drain the compose file's 40 s explicitly.
        run("down", "--timeout", "40", timeout=120)
    assert podman("ps", "--all", "--filter", f"label=io.podman.compose.project={project}", "--quiet").stdout == ""
