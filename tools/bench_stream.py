"""Stream benchmark: one live stream of a keypoint sequence at 64 and 128, calibrated like ``halo bench mesh``.

Usage: python -m tools.bench_stream [--sequence kps_seq.pkl|frames.npy] [--resolutions 64,128] [--smooth 0]
Defaults: HALO's tracked demo sequence beside the repository if present (else the project's synthetic one),
and the published checkpoint there if present (the model the original's timings were measured on).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import models
from models.grasps.model import load_vae_weights
from models.stream_bench import load_sequence, stream_benchmark, synthetic_sequence
from tools.bench_mesh import REFERENCE, calibration_seconds

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequence", default=None, help="kps_seq.pkl or a (T,21,3) .npy, metres, mano order")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--resolutions", default="64,128")
    parser.add_argument("--smooth", type=int, default=0, help="Taubin iterations on every frame (0 = parity surface)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the stream and the calibration")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint
    if checkpoint is None and (REFERENCE / "model_best.pt").is_file():
        checkpoint = str(REFERENCE / "model_best.pt")
    base = models.load_base(checkpoint)
    sequence = args.sequence or (REFERENCE / "kps_seq.pkl" if (REFERENCE / "kps_seq.pkl").is_file() else None)
    if sequence is not None:
        frames, source = load_sequence(sequence), Path(sequence).name
    else:
        vae, _ = load_vae_weights(REPO / "models" / "checkpoints" / "halo_vae.safetensors")
        frames, source = synthetic_sequence(vae.skeleton), "synthetic open-fist-open"
    print(f"model {base.card['name']} ({base.card['sha256'][:12]}), sequence {source} ({len(frames)} frames), "
          f"torch threads {args.threads}, smooth {args.smooth}")
    rows = stream_benchmark(
        base, frames, lambda: calibration_seconds(threads=args.threads),
        [int(r) for r in args.resolutions.split(",")], args.smooth, args.repeats,
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"sequence": source, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
