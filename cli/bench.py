"""``halo bench mesh | grasps | serve | decomposition | stream``: speed measurements (not tests), run by the client-side ``tools``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli.files import load_keypoints, read_array
from cli.options import add_resolution
from models.assets import SAMPLE_KEYPOINTS
from tools.bench_grasps import GraspBench, run_grasp_benchmark
from tools.bench_live import PROTOCOLS, LiveBench, run_live_benchmark
from tools.bench_mesh import MeshBench, run_mesh_benchmark
from tools.bench_stream import StreamBench, run_stream_benchmark
from tools.decomposition_fidelity import run_decomposition_fidelity
from tools.load import format_result, result_json, run_bench
from tools.load_mix import format_mix_result, parse_mix, run_mix_bench


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def run_mesh_bench(args: argparse.Namespace) -> int:
    keypoints = None if args.keypoints is None else read_array(Path(args.keypoints), "keypoints")
    return run_mesh_benchmark(MeshBench(
        keypoints=keypoints, keypoints_source=args.keypoints or "", checkpoint=args.checkpoint, device=args.device,
        resolutions=_int_list(args.resolutions), batches=_int_list(args.batches), repeats=args.repeats,
        threads=args.threads, json_path=None if args.json is None else Path(args.json),
    ))


def run_grasps_bench(args: argparse.Namespace) -> int:
    return run_grasp_benchmark(GraspBench(
        checkpoint=args.checkpoint, base_checkpoint=args.base_checkpoint, objects=args.objects,
        samples=args.samples, resolution=args.resolution, seed=args.seed, threads=args.threads,
        physics=args.physics, object_set=args.set, first_sight=args.first_sight,
        json_path=None if args.json is None else Path(args.json),
    ))


def run_decomposition_bench(args: argparse.Namespace) -> int:
    result = run_decomposition_fidelity(args.samples, args.procedural, args.seed)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _add_decomposition(bench_commands: argparse._SubParsersAction) -> None:
    parser = bench_commands.add_parser(
        "decomposition", help="physics check with voxel convex pieces vs CoACD on the same grasps (fidelity, speed)")
    parser.add_argument("--samples", type=int, default=8, help="refined grasps per object")
    parser.add_argument("--procedural", type=int, default=20, help="procedural test objects to look through")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.set_defaults(func=run_decomposition_bench)


def run_stream_bench(args: argparse.Namespace) -> int:
    json_path = None if args.json is None else Path(args.json)
    if args.protocol != "library":
        return run_live_benchmark(LiveBench(
            protocol=args.protocol, url=args.url, grpc_target=args.grpc_target, token=args.token,
            sequence=args.sequence, checkpoint=args.checkpoint, resolutions=_int_list(args.resolutions),
            streams=_int_list(args.streams), fps=args.fps, passes=args.repeats, smooth=args.smooth,
            encoding=args.encoding, grasp_load=args.grasp_load, threads=args.threads, json_path=json_path,
        ))
    return run_stream_benchmark(StreamBench(
        sequence=args.sequence, checkpoint=args.checkpoint, resolutions=_int_list(args.resolutions),
        smooth=args.smooth or 0, repeats=args.repeats, threads=args.threads, split=args.split, json_path=json_path,
    ))


def _add_stream(bench_commands: argparse._SubParsersAction) -> None:
    parser = bench_commands.add_parser(
        "stream",
        help="live streams of a keypoint sequence, in the library or through a server, calibrated",
        description="Without --protocol: one stream in the library (models.stream_bench). With --protocol grpc "
        "or websocket: 1 and 4 concurrent live streams through a server (the one at --url / --grpc-target, "
        "else one started for the run), frames/s, skipped frames and latency percentiles (tools.bench_live).",
    )
    parser.add_argument("--sequence", default=None, help="kps_seq.pkl or a (T,21,3) .npy, metres, mano order")
    parser.add_argument("--checkpoint", default=None, help="base model (of the server the bench starts)")
    parser.add_argument("--resolutions", default="64,128")
    parser.add_argument("--smooth", type=int, default=None,
                        help="Taubin iterations on every frame (default: library 0 = parity surface; "
                             "server: its live default)")
    parser.add_argument("--repeats", type=int, default=1, help="passes through the sequence (server: there and back)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the stream and the calibration")
    parser.add_argument("--split", action="store_true",
                        help="library: a helper thread takes half of each decoder call (as for a server's lone live frame)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    server = parser.add_argument_group("through a server")
    server.add_argument("--protocol", choices=("library", *PROTOCOLS), default="library")
    server.add_argument("--url", default=None, help="REST base URL of a running server (default: start one)")
    server.add_argument("--grpc-target", default=None, help="gRPC address of that server (default 127.0.0.1:50051)")
    server.add_argument("--token", default=None, help="bearer token, if the server requires one")
    server.add_argument("--streams", default="1,4", help="concurrent streams per row")
    server.add_argument("--fps", type=float, default=0.0,
                        help="frames sent per second per stream (0: lock-step, the next frame when the reply is in)")
    server.add_argument("--encoding", choices=("base64", "json"), default="base64", help="WebSocket mesh encoding")
    server.add_argument("--grasp-load", action="store_true",
                        help="also one stream alone and beside two 8-grasp requests, and the p99 ratio")
    parser.set_defaults(func=run_stream_bench)


def _add_mesh(bench_commands: argparse._SubParsersAction) -> None:
    parser = bench_commands.add_parser("mesh", help="milliseconds per mesh, calibrated against a fixed workload")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--keypoints", default=None, help="default: the reference keypoints, else the sample hand")
    parser.add_argument("--resolutions", default="128,512")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads for both the meshes and the calibration workload"
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.set_defaults(func=run_mesh_bench)


def _add_grasps(bench_commands: argparse._SubParsersAction) -> None:
    parser = bench_commands.add_parser("grasps", help="seconds per grasp request, calibrated against a fixed workload")
    parser.add_argument("--checkpoint", default=None, help="VAE (default: the shipped one)")
    parser.add_argument("--base-checkpoint", default=None, help="base model (default: the shipped one)")
    parser.add_argument("--objects", type=int, default=5, help="held-out test objects, one request each")
    parser.add_argument("--samples", type=int, default=8, help="grasps per request")
    add_resolution(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the requests and the calibration")
    parser.add_argument("--physics", action="store_true", help="also run and time the MuJoCo physics check")
    parser.add_argument("--set", choices=("procedural", "real"), default="procedural",
                        help="procedural test objects (--objects of them) or the real-object set plus a 200k-face scan")
    parser.add_argument("--first-sight", action="store_true",
                        help="time each object's preparation and decomposition inside its (first) request")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.set_defaults(func=run_grasps_bench)


def _add_serve(bench_commands: argparse._SubParsersAction) -> None:
    bench = bench_commands.add_parser(
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
        default=SAMPLE_KEYPOINTS,
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
    bench.set_defaults(func=run_serve_bench)


def run_serve_bench(args: argparse.Namespace) -> int:
    if args.mix is not None:
        return _bench_mix(args)
    result = run_bench(load_keypoints(args.keypoints), **_load_target(args))
    print(result_json(result) if args.json else format_result(result))
    return 0


def _load_target(args: argparse.Namespace) -> dict:
    """The flags both load tests share: where the server is, how hard and how long to load it."""
    return {"protocol": args.protocol, "http_url": args.url, "grpc_target": args.grpc_target,
            "concurrency": args.concurrency, "duration_s": args.duration, "resolution": args.resolution,
            "token": args.token}


def _bench_mix(args: argparse.Namespace) -> int:
    result = run_mix_bench(
        load_keypoints(args.keypoints),
        parse_mix(args.mix),
        rate_per_s=args.rate,
        **_load_target(args),
        grasp_object=args.object,
        grasp_samples=args.grasp_samples,
        grasp_refine=args.grasp_refine,
        grasp_clients=args.grasp_clients,
        seed=args.seed,
    )
    print(result_json(result) if args.json else format_mix_result(result))
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``bench`` and its ``mesh``, ``grasps``, ``serve``, ``decomposition`` and ``stream`` subcommands."""
    bench = commands.add_parser("bench", help="benchmarks (speed, not tests)")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    _add_mesh(bench_commands)
    _add_grasps(bench_commands)
    _add_serve(bench_commands)
    _add_decomposition(bench_commands)
    _add_stream(bench_commands)
