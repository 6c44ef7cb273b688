"""Run `lucida ARGS...` as on a plain `pip install camera-lucida` (no `[host]` extra).

The host-only modules (TensorFlow, Keras, scikit-learn, SciPy, matplotlib) are made unimportable
before the CLI starts, exactly as when they are not installed: `import keras` raises
ModuleNotFoundError. `--all-help` runs every subcommand's --help in this one process.
"""

from __future__ import annotations

import importlib.abc
import sys

HOST = {"tensorflow", "keras", "tf_keras", "sklearn", "scipy", "matplotlib"}


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in HOST:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def main(argv: list[str]) -> int:
    sys.meta_path.insert(0, _NotInstalled())
    from lucida.tools.cli import COMMAND_MODULES, build_parser
    from lucida.tools.cli import main as lucida

    if argv == ["--all-help"]:
        commands = sorted(build_parser()._subparsers._group_actions[0].choices)
        assert len(commands) >= len(COMMAND_MODULES), commands
        for name in commands:
            try:
                lucida([name, "--help"])
            except SystemExit as exc:
                if exc.code not in (0, None):
                    return int(exc.code)
            print(f"@@ok {name}", flush=True)
        return 0
    return lucida(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
