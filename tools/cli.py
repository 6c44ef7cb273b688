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

# Modules under lucida.tools that add a subcommand. Keep sorted by command name.
COMMAND_MODULES = [
    "lucida.tools.bench",
    "lucida.tools.bundle_cmd",
    "lucida.tools.calibrate_cli",
    "lucida.tools.candidates",
    "lucida.tools.check",
    "lucida.tools.compile_edgetpu",
    "lucida.tools.demo",
    "lucida.tools.deploy_cmd",
    "lucida.tools.evaluate",
    "lucida.tools.hil_cmd",
    "lucida.tools.predict_cmd",
    "lucida.tools.profile_cmd",
    "lucida.tools.quantize_cmd",
    "lucida.tools.run_cmd",
    "lucida.tools.select_cmd",
    "lucida.tools.train_demo",
]


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
