"""`lucida run --config FILE`: start the on-device daemon (see lucida.runtime.daemon)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("run", help="run the on-device daemon (pipeline, serial link, HTTP API)")
    p.add_argument("--config", required=True, help="YAML config file")
    p.add_argument("--check", action="store_true", help="validate the config and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    from lucida.runtime.config import load_config
    from lucida.runtime.daemon import Daemon

    config = load_config(args.config)
    if args.check:
        print(f"{args.config}: valid")
        return 0
    return Daemon(config, args.config).run_forever()
