"""``halo serve``: the server's settings as flags (one per ``Settings`` field), then run it."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from service.config import Settings


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--kebab-case`` flag per settings field; unset flags leave the field to env/defaults."""
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = field.description or ""
        if "default" not in help_text:
            help_text += f" (default: {field.default})"
        help_text += f" [env HALO_{name.upper()}]"
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar="VALUE", help=help_text)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the flags that were given, the ``HALO_*`` environment and the defaults."""
    given = {name: value for name, value in vars(args).items() if name in Settings.model_fields}
    try:
        return Settings(**given)
    except ValidationError as error:
        first = error.errors()[0]
        message = first["msg"].removeprefix("Value error, ")  # model-level messages start with the field
        field = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{field}: {message}" if field else message) from None


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``serve``."""
    serve = commands.add_parser(
        "serve",
        help="run the inference server (REST + gRPC)",
        description="Run the REST and gRPC servers on one engine. Every flag also reads HALO_<FLAG> "
        "from the environment (e.g. HALO_MAX_BATCH_SIZE); a flag given here wins.",
    )
    add_settings_arguments(serve)
    serve.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from service.server import run  # uvicorn and grpc are loaded only to serve


    return run(settings_from_args(args))
