"""Files shipped with the models: the sample hand every demo, warm-up and self-contained test starts from."""

from __future__ import annotations

import json
from pathlib import Path

SAMPLE_KEYPOINTS = Path(__file__).resolve().parent / "sample_keypoints.json"


def sample_hand() -> dict:
    """The sample hand: {"keypoints": (21,3) list in metres, "joint_order": "mano", "hand": "right", ...}."""
    return json.loads(SAMPLE_KEYPOINTS.read_text())
