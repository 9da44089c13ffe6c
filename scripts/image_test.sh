#!/usr/bin/env bash
# `make image-test`: build docker/Dockerfile with buildah and check the image for real with podman
# (tests/test_image.py). No registry is needed: the Debian base image is made with debootstrap and
# imported locally. Root (or sudo) is needed for apt-get, debootstrap and rootful podman.
#
# Cached between runs: the debootstrap tarball of the base image in $HALO_CACHE_DIR/image (default
# ~/.cache/halo/image, outside the clone, so a fresh clone on the same machine, as CI makes, reuses it;
# safe to delete), and the base image and the built layers (buildah --layers) in podman's own storage, so
# a run whose build context is unchanged does not rebuild.
#
# PyTorch: the image must carry the CPU wheel, which setup.sh takes from PyTorch's CPU wheel index. When
# pip's configuration names a local wheel directory (find-links) holding it, that directory is mounted
# read-only into the build, for machines that cannot reach the index.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${HALO_IMAGE:-localhost/halo-serve:cpu}
BASE_IMAGE=localhost/debian:bookworm-slim
CACHE=$(realpath -m "${HALO_CACHE_DIR:-$HOME/.cache/halo}/image")
BUILD_MOUNT=/run/halo-build
export CONTAINERS_CONF=$PWD/docker/podman/containers.conf

SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
APT_PACKAGES=(podman buildah runc uidmap slirp4netns fuse-overlayfs debootstrap containernetworking-plugins iptables
  podman-compose)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
if ((${#missing[@]})); then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
mkdir -p "$CACHE"

step "base image $BASE_IMAGE"
if ! $SUDO podman image exists "$BASE_IMAGE"; then
  if [[ ! -s $CACHE/bookworm-minbase.tar ]]; then
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXX")
    $SUDO debootstrap --variant=minbase bookworm "$rootfs" >"$CACHE/debootstrap.log"
    # Like the official slim image: no apt lists, no docs.
    $SUDO rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/*
    $SUDO tar -C "$rootfs" -cf "$CACHE/bookworm-minbase.tar.part" . && mv "$CACHE/bookworm-minbase.tar.part" "$CACHE/bookworm-minbase.tar"
    $SUDO rm -rf "$rootfs"
  fi
  $SUDO podman import --change 'CMD ["bash"]' "$CACHE/bookworm-minbase.tar" "$BASE_IMAGE" >/dev/null
fi

# pip inside the build: trust this machine's CA bundle (it may sit behind a TLS-inspecting proxy) through
# a pip.conf mounted for the build only; nothing of it lands in the image.
pip_conf=$CACHE/pip.conf
mounts=()
echo "[global]" >"$pip_conf"
ca_file=$(python3 -c "import ssl; print(ssl.get_default_verify_paths().cafile or '')")
if [[ -n $ca_file && -f $ca_file ]]; then
  echo "cert = $BUILD_MOUNT/ca.crt" >>"$pip_conf"
  mounts+=(-v "$ca_file:$BUILD_MOUNT/ca.crt:ro")
fi
wheels=${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}
if [[ -n $wheels && -d $wheels ]] && compgen -G "$wheels/torch-*+cpu-*.whl" >/dev/null; then
  echo "find-links = $BUILD_MOUNT/wheels" >>"$pip_conf"
  mounts+=(-v "$wheels:$BUILD_MOUNT/wheels:ro")
fi
mounts+=(-v "$pip_conf:$BUILD_MOUNT/pip.conf:ro")
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "PIP_CONFIG_FILE=$BUILD_MOUNT/pip.conf")

step "build $IMAGE"
started=$SECONDS
# --format docker: the OCI format has no HEALTHCHECK. chroot isolation works inside a CI container.
$SUDO env CONTAINERS_CONF="$CONTAINERS_CONF" nice -n 10 buildah bud --isolation chroot --format docker --layers \
  "${build_args[@]}" "${mounts[@]}" -f docker/Dockerfile -t "$IMAGE" .
echo "build took $((SECONDS - started)) s"
$SUDO podman image inspect --format 'image size: {{.Size}} bytes' "$IMAGE"

step "checks (tests/test_image.py, then podman-compose up)"
$SUDO env CONTAINERS_CONF="$CONTAINERS_CONF" HALO_IMAGE="$IMAGE" \
  .venv/bin/python -m pytest -m image tests/test_image.py -v -p no:cacheprovider --durations=0
