# The two commands of the README: `make run` (the main job) and `make test` (the whole suite).
VENV := .venv/bin

.PHONY: setup setup-dev run mesh-sample test image-test lint bench

setup:
	scripts/setup.sh

setup-dev:
	scripts/setup.sh --dev

run: setup
	$(VENV)/halo serve

mesh-sample: setup
	$(VENV)/halo mesh --keypoints models/assets/sample_keypoints.json -o out/hand.ply

test: setup-dev
	$(VENV)/ruff check .
	$(VENV)/python -m pytest -q
	scripts/image_test.sh

# Builds docker/Dockerfile with buildah and checks the running container with podman (needs root or sudo).
image-test: setup-dev
	scripts/image_test.sh

lint:
	$(VENV)/ruff check .

bench: setup
	$(VENV)/halo bench mesh
