"""Server settings: flags override HALO_* environment variables, which override the defaults."""

from __future__ import annotations

import pytest

from cli.main import build_parser
from cli.serve import settings_from_args


def parse(argv: list[str]):
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_defaults_env_and_flags_in_that_order_of_precedence(monkeypatch):
    assert parse([]).max_batch_size == 8
    monkeypatch.setenv("HALO_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("HALO_AUTH_TOKEN", "from-env")
    assert parse([]).max_batch_size == 4
    settings = parse(["--max-batch-size", "6", "--http-port", "9000", "--no-warmup", "--log-format", "text"])
    assert (settings.max_batch_size, settings.http_port, settings.warmup, settings.log_format) == (6, 9000, False, "text")
    assert settings.auth_token == "from-env"


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--max-resolution", "100"], "max_resolution"),
        (["--default-resolution", "256", "--max-resolution", "128"], "default_resolution"),
        (["--max-batch-size", "0"], "max_batch_size"),
        (["--log-format", "xml"], "log_format"),
        (["--grasp-workers", "0"], "grasp_workers"),
        (["--max-grasp-queue", "0"], "max_grasp_queue"),
        (["--grasp-nice", "20"], "grasp_nice"),
    ],
)
def test_invalid_settings_name_the_field(argv, field):
    with pytest.raises(ValueError, match=field):
        parse(argv)


def test_lane_settings_have_flags_and_environment_variables(monkeypatch):
    defaults = parse([])
    assert (defaults.mesh_workers, defaults.grasp_workers, defaults.max_grasp_queue) == (2, 1, 4)
    monkeypatch.setenv("HALO_GRASP_WORKERS", "2")
    settings = parse(["--mesh-workers", "3", "--max-grasp-queue", "8", "--grasp-nice", "0"])
    assert (settings.mesh_workers, settings.grasp_workers, settings.max_grasp_queue, settings.grasp_nice) == (3, 2, 8, 0)


def test_bench_serve_is_a_bench_subcommand():
    args = build_parser().parse_args(["bench", "serve", "--protocol", "grpc", "--concurrency", "32", "--duration", "60"])
    assert (args.protocol, args.concurrency, args.duration) == ("grpc", 32, 60.0)


def test_bench_serve_mix_options():
    args = build_parser().parse_args(
        ["bench", "serve", "--mix", "mesh=0.9,grasps=0.1", "--rate", "6", "--grasp-samples", "8", "--no-grasp-refine"]
    )
    assert (args.mix, args.rate, args.grasp_samples, args.grasp_refine) == ("mesh=0.9,grasps=0.1", 6.0, 8, False)
