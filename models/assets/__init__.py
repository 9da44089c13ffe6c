"""Files shipped with the models: the sample hand and the sample sequence that demos, warm-up, the live viewer and
self-contained tests start from."""

from __future__ import annotations

import json
from pathlib import Path

SAMPLE_KEYPOINTS = Path(__file__).resolve().parent / "sample_keypoints.json"
SAMPLE_SEQUENCE = Path(__file__).resolve().parent / "sample_sequence.json"


def sample_hand() -> dict:
    """The sample hand: {"keypoints": (21,3) list in metres, "joint_order": "mano", "hand": "right", ...}."""
    return json.loads(SAMPLE_KEYPOINTS.read_text())


def sample_sequence() -> dict:
    """The sample sequence: {"keypoints": (T,21,3) list in metres, "joint_order", "hand", "frames_per_second", ...}."""
    return json.loads(SAMPLE_SEQUENCE.read_text())
