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
import os
import sys
from importlib import metadata

# Imports that only the `[host]` extra provides (TensorFlow, Keras, scikit-learn, SciPy, matplotlib).
HOST_MODULES = frozenset({"tensorflow", "keras", "tf_keras", "sklearn", "scipy", "matplotlib"})
HOST_HINT = "this needs `pip install camera-lucida[host]`"

# Modules under lucida.tools that add a subcommand (`lucida run` is here, in cli). Keep sorted by
# command name.
COMMAND_MODULES = [
    "lucida.tools.device.audit",
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
    "lucida.tools.device.models",
    "lucida.tools.latency.predict",
    "lucida.tools.latency.profile",
    "lucida.tools.toolchain.quantize",
    "lucida.tools.cli",
    "lucida.tools.latency.select",
    "lucida.tools.demo.recipe",
]


class HostExtraMissing(ValueError):
    """A host-only command ran on a plain install (no `[host]` extra)."""

    exit_code = 2


def version() -> str:
    """The installed camera-lucida version (setup.cfg's, via the distribution metadata)."""
    try:
        return metadata.version("camera-lucida")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def host_extra_missing(exc: ImportError) -> HostExtraMissing | None:
    """A readable error when `exc` is a missing host-extra module, else None."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if name not in HOST_MODULES:
        return None
    return HostExtraMissing(f"{HOST_HINT} (no module {name!r})")


def require_host(*modules: str) -> None:
    """Stop a host-only command before it does any work when the `[host]` extra is missing."""
    from importlib.util import find_spec

    for name in modules or ("tensorflow",):
        try:
            spec = find_spec(name)
        except (ImportError, ValueError):  # a broken or blocked install counts as missing
            spec = None
        if spec is None:
            raise HostExtraMissing(f"{HOST_HINT} (no module {name!r})")


def quiet_native_logs(level: int) -> None:
    """TensorFlow's and OpenCV's C++ start-up chatter off unless the log level is DEBUG.

    Environment variables are read when those libraries load, so this runs before any command
    imports them; a value the user exported is kept. LiteRT's own INFO lines are filtered where
    interpreters are built (lucida.runtime.native_log).
    """
    if level <= logging.DEBUG:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO and WARNING
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    if "cv2" in sys.modules:  # already loaded (e.g. main() called in-process)
        cv2 = sys.modules["cv2"]
        if hasattr(cv2, "setLogLevel"):
            cv2.setLogLevel(2)  # cv::utils::logging::LOG_LEVEL_ERROR


def register(sub) -> None:
    """`lucida run --config FILE`: start the on-device daemon (see lucida.runtime.daemon)."""
    p = sub.add_parser("run", help="run the on-device daemon (pipeline, serial link, HTTP API)")
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the config as a start would (paths, devices, bundles in a sandbox) and exit",
    )
    p.set_defaults(func=run_daemon)


class CheckFailed(ValueError):
    exit_code = 2


def run_daemon(args) -> int:
    from lucida.runtime.config import load_config
    from lucida.runtime.daemon import Daemon
    from lucida.runtime.preflight import check_config, preflight, ready_lines

    config = load_config(args.config)
    if args.check:  # the very findings a start and a SIGHUP reload are refused on
        findings = preflight(config, create=True)  # also makes the folders the daemon writes to
        bad = [f for f in findings if not f.ok]
        for f in findings:
            print(f.line())
        if bad:
            keys = ", ".join(dict.fromkeys(f.key or f.subject for f in bad))
            raise CheckFailed(
                f"{args.config}: {len(bad)} problem(s) above ({keys}); fix them and rerun --check"
            )
        print(f"{args.config}: valid, ready to run")
        return 0
    verified: set = set()  # refused here, before the daemon opens a file or a device
    check_config(config, args.config, verified=verified)
    daemon = Daemon(config, args.config, verified=verified)
    daemon.on_ready = lambda d: print("\n".join(ready_lines(config, d.http.url)), flush=True)
    return daemon.run_forever()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lucida", description="Edge runtime for augmented-reality microscopes."
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="DEBUG, INFO, WARNING, ERROR (DEBUG also shows TensorFlow/LiteRT/OpenCV's own logs)",
    )
    parser.add_argument("--version", action="version", version=f"lucida {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _log_level(argv: list[str]) -> int:
    """The --log-level given on the command line (before argparse runs), as a logging level."""
    value = "WARNING"
    for i, a in enumerate(argv):
        if a == "--log-level" and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith("--log-level="):
            value = a.split("=", 1)[1]
    level = getattr(logging, str(value).upper(), None)
    return level if isinstance(level, int) else logging.WARNING


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    level = _log_level(argv)
    quiet_native_logs(level)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"lucida {args.command}: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except ImportError as exc:
        missing = host_extra_missing(exc)
        if missing is None:
            raise
        print(f"lucida {args.command}: error: {missing}", file=sys.stderr)
        return missing.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
