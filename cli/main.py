"""The ``halo`` command: every subcommand's flags live in this package, and only here.

    halo mesh | occupancy | convert-checkpoint     the base model on files        (cli.hands)
    halo grasps                                    grasps of an object file       (cli.grasps)
    halo serve                                     the REST + gRPC server         (cli.serve)
    halo bench mesh | grasps | serve               speed measurements             (cli.bench)
    halo train base | calibrate | vae, eval ...    training and evaluation        (cli.train)
"""

from __future__ import annotations

import argparse
import sys

from cli import bench, grasps, hands, serve, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="halo", description="HALO hand meshes from keypoints, and grasps.")
    commands = parser.add_subparsers(dest="command", required=True)
    hands.add_commands(commands)
    bench.add_commands(commands)
    train.add_commands(commands)
    grasps.add_commands(commands)
    serve.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"halo {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
