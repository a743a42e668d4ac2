"""The one ``stream`` command.

Each sub-command lives in ``stream/commands/<name>.py`` and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed args; returns an exit code).
Command modules keep heavy imports (faust, river, matplotlib) inside their functions so that
``stream --help`` and quick commands start fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from stream import __version__

# Order is the order shown in --help.
COMMANDS = [
    "kafka",
    "topics",
    "worker",
    "produce",
    "alerts",
    "score",
    "eval",
    "drift",
    "demo",
    "doctor",
    "lag-exporter",
    "alertmanager-bridge",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream",
        description="Streaming anomaly detection and model monitoring on Apache Kafka.",
        epilog="Settings come from STREAM_* environment variables and an optional file "
        "(STREAM_CONFIG_FILE or --config); see the README's settings table.",
    )
    parser.add_argument("--version", action="version", version=f"stream {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings file (YAML or JSON); same keys as the STREAM_* variables, lower-case, "
        "without the prefix. Environment variables win over the file.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        modname = f"stream.commands.{name.replace('-', '_')}"  # lag-exporter -> lag_exporter
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:  # a command not built yet must not break the rest
            if exc.name != modname:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        import os

        os.environ["STREAM_CONFIG_FILE"] = args.config
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from stream.settings import SettingsError

    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"stream: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
