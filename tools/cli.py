"""The `lucida` command: one subcommand per module, each imported only when the CLI starts.

A command module defines `register(sub)`, which adds its parser to the argparse
subparsers and sets `func=run`. Heavy host dependencies (TensorFlow) are imported
inside `run`, never at module import, so `lucida --help` stays fast on a device.

Bad input is reported as one line, `lucida CMD: error: ...`, never a traceback:
library code raises ValueError (or OSError) subclasses with a readable message, and
an optional `exit_code` attribute.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules under lucida.tools that add a subcommand (`lucida run` is here, in cli). Keep sorted by
# command name.
COMMAND_MODULES = [
    "lucida.tools.bench.command",
    "lucida.tools.toolchain.bundle",
    "lucida.tools.calibrate.commands",
    "lucida.tools.latency.candidates",
    "lucida.tools.toolchain.check",
    "lucida.tools.toolchain.compile",
    "lucida.tools.demo.embedded",
    "lucida.tools.toolchain.deploy",
    "lucida.tools.demo.evaluate",
    "lucida.tools.hil.command",
    "lucida.tools.toolchain.infer",
    "lucida.tools.latency.predict",
    "lucida.tools.latency.profile",
    "lucida.tools.toolchain.quantize",
    "lucida.tools.cli",
    "lucida.tools.latency.select",
    "lucida.tools.demo.recipe",
]


def register(sub) -> None:
    """`lucida run --config FILE`: start the on-device daemon (see lucida.runtime.daemon)."""
    p = sub.add_parser("run", help="run the on-device daemon (pipeline, serial link, HTTP API)")
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--check", action="store_true", help="validate the config and exit")
    p.set_defaults(func=run_daemon)


def run_daemon(args) -> int:
    from lucida.runtime.config import load_config
    from lucida.runtime.daemon import Daemon

    config = load_config(args.config)
    if args.check:
        print(f"{args.config}: valid")
        return 0
    return Daemon(config, args.config).run_forever()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lucida", description="Edge runtime for augmented-reality microscopes."
    )
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"lucida {args.command}: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
