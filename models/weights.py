"""Our checkpoint format: safetensors weights plus a JSON model card beside them (no pickle anywhere)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_path(weights_path: str | Path) -> Path:
    """The model card that sits beside a .safetensors file."""
    return Path(weights_path).with_suffix(".json")


def update_card(weights_path: str | Path, **fields: object) -> None:
    """Set top-level ``fields`` in the model card beside ``weights_path`` (the weights are untouched)."""
    card_file = card_path(weights_path)
    card_file.write_text(json.dumps({**json.loads(card_file.read_text()), **fields}, indent=2) + "\n")


def save_weights(module: nn.Module, path: str | Path, card: dict, kind: str) -> dict:
    """Write ``module``'s weights and its card (its ``config`` dataclass and sha256 filled in); returns the card."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = asdict(module.config)
    tensors = {name: value.detach().cpu().contiguous() for name, value in module.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": kind, "config": json.dumps(config)})
    card = {**card, "config": config, "weights": path.name, "sha256": file_sha256(path)}
    card_path(path).write_text(json.dumps(card, indent=2) + "\n")
    return card


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A .safetensors file -> (state dict, its card with name, sha256 and file name filled in)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {path}")
    card_file = card_path(path)
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    return load_file(str(path)), {"name": path.stem, **card, "sha256": file_sha256(path), "path": path.name}
