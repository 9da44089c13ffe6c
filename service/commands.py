"""The ``halo serve`` and ``halo bench serve`` subcommands (hooked into the ``halo`` CLI by cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.config import add_settings_arguments, settings_from_args

DEFAULT_BENCH_KEYPOINTS = Path(__file__).resolve().parent.parent / "models" / "assets" / "sample_keypoints.json"


def add_serve_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the top-level ``halo`` subcommands."""
    serve = subparsers.add_parser(
        "serve",
        help="run the inference server (REST + gRPC)",
        description="Run the REST and gRPC servers on one engine. Every flag also reads HALO_<FLAG> "
        "from the environment (e.g. HALO_MAX_BATCH_SIZE); a flag given here wins.",
    )
    add_settings_arguments(serve)
    serve.set_defaults(func=_serve)


def add_bench_serve_command(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``halo bench`` subcommands."""
    bench = bench_subparsers.add_parser(
        "serve",
        help="load-test a running server",
        description="N concurrent clients for T seconds; reports throughput, latency percentiles, "
        "errors by status and the server's RSS before / after. With --mix: an open-loop mixed load "
        "(Poisson arrivals at --rate per second, at most --concurrency in flight), reported per endpoint.",
    )
    bench.add_argument("--protocol", choices=("rest", "grpc"), default="rest")
    bench.add_argument("--url", default="http://127.0.0.1:8000", help="REST base URL (also used for /metrics)")
    bench.add_argument("--grpc-target", default="127.0.0.1:50051")
    bench.add_argument("--concurrency", type=int, default=16)
    bench.add_argument("--duration", type=float, default=30.0, help="seconds")
    bench.add_argument("--resolution", type=int, default=128)
    bench.add_argument(
        "--keypoints",
        type=Path,
        default=DEFAULT_BENCH_KEYPOINTS,
        help="JSON file with one (21,3) hand or a list of hands, metres, mano order",
    )
    bench.add_argument("--token", default=None, help="bearer token, if the server requires one")
    bench.add_argument("--json", action="store_true", help="print the result as one JSON line")
    mixed = bench.add_argument_group("mixed open-loop load")
    mixed.add_argument("--mix", default=None, help="endpoint weights, e.g. mesh=0.9,grasps=0.1 (also: occupancy)")
    mixed.add_argument("--rate", type=float, default=4.0, help="arrivals per second (Poisson) with --mix")
    mixed.add_argument("--grasp-samples", type=int, default=4, help="grasps per grasp request")
    mixed.add_argument(
        "--grasp-refine", action=argparse.BooleanOptionalAction, default=True, help="refine sampled grasps"
    )
    mixed.add_argument(
        "--grasp-clients", type=int, default=0, help="closed-loop clients sending grasp requests the whole time"
    )
    mixed.add_argument("--object", type=Path, default=None, help="object mesh for grasps (default: a 6x8x5 cm box)")
    mixed.add_argument("--seed", type=int, default=0, help="seeds the arrivals and the endpoint choices")
    bench.set_defaults(func=_bench_serve)


def _serve(args: argparse.Namespace) -> int:
    from service.server import run

    return run(settings_from_args(args))


def _bench_serve(args: argparse.Namespace) -> int:
    from service.bench import format_result, load_keypoints, result_json, run_bench

    if args.mix is not None:
        return _bench_mix(args)
    result = run_bench(
        load_keypoints(args.keypoints),
        protocol=args.protocol,
        http_url=args.url,
        grpc_target=args.grpc_target,
        concurrency=args.concurrency,
        duration_s=args.duration,
        resolution=args.resolution,
        token=args.token,
    )
    print(result_json(result) if args.json else format_result(result))
    return 0


def _bench_mix(args: argparse.Namespace) -> int:
    from service.bench import format_mix_result, load_keypoints, parse_mix, result_json, run_mix_bench

    result = run_mix_bench(
        load_keypoints(args.keypoints),
        parse_mix(args.mix),
        rate_per_s=args.rate,
        protocol=args.protocol,
        http_url=args.url,
        grpc_target=args.grpc_target,
        concurrency=args.concurrency,
        duration_s=args.duration,
        resolution=args.resolution,
        grasp_object=args.object,
        grasp_samples=args.grasp_samples,
        grasp_refine=args.grasp_refine,
        grasp_clients=args.grasp_clients,
        token=args.token,
        seed=args.seed,
    )
    print(result_json(result) if args.json else format_mix_result(result))
    return 0
