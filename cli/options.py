"""Flags several ``halo`` subcommands share, each declared once."""

from __future__ import annotations

import argparse

from models import RESOLUTIONS
from models.skeleton import HANDS

DEVICE_HELP = "auto, cpu, cuda or cuda:N"
JOINT_ORDER_HELP = "mano (= mediapipe, openpose), biomech or halo"


def add_resolution(parser: argparse.ArgumentParser, default: int = 128) -> None:
    """``--resolution``: one of the meshing resolutions."""
    parser.add_argument("--resolution", type=int, default=default, choices=RESOLUTIONS)


def add_hand_model(parser: argparse.ArgumentParser) -> None:
    """The flags of a command that meshes keypoints with the base model."""
    parser.add_argument("--keypoints", required=True, help="(21,3) or (B,21,3) keypoints, metres: .json or .npy")
    parser.add_argument(
        "--checkpoint", default=None, help="base checkpoint (.safetensors or the published HALO model_best.pt)"
    )
    parser.add_argument("--joint-order", default="mano", help=JOINT_ORDER_HELP)
    parser.add_argument("--hand", default="right", choices=HANDS)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_grasp_model(parser: argparse.ArgumentParser) -> None:
    """The flags of a command that samples grasps (VAE + base model)."""
    parser.add_argument("--checkpoint", default=None, help="VAE .safetensors (default: the shipped one)")
    parser.add_argument("--base-checkpoint", default=None, help="base model (default: the shipped one)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_resolution(parser)
    parser.add_argument("--seed", type=int, default=0)
