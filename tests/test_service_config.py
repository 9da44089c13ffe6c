"""Server settings: flags override HALO_* environment variables, which override the defaults."""

from __future__ import annotations

import pytest

from service.cli import build_parser
from service.config import settings_from_args


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
    ],
)
def test_invalid_settings_name_the_field(argv, field):
    with pytest.raises(ValueError, match=field):
        parse(argv)


def test_bench_serve_is_a_bench_subcommand():
    args = build_parser().parse_args(["bench", "serve", "--protocol", "grpc", "--concurrency", "32", "--duration", "60"])
    assert (args.protocol, args.concurrency, args.duration) == ("grpc", 32, 60.0)
