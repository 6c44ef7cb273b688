"""`lucida models [--to URL]`: the bundles a device (or this host) holds and which objective uses
which. Without --to: the shipped bundles and any --dir folders on this machine."""

from __future__ import annotations

import json
import os


class ModelsError(ValueError):
    exit_code = 2


def register(sub) -> None:
    p = sub.add_parser("models", help="list the bundles a device (--to URL) or this host holds")
    p.add_argument("--to", metavar="URL", help="a device's daemon, e.g. http://pi.local:8080")
    p.add_argument(
        "--token", default=os.environ.get("LUCIDA_TOKEN"), help="bearer token ($LUCIDA_TOKEN)"
    )
    p.add_argument("--dir", action="append", default=[], help="local: extra bundle folder")
    p.add_argument("--task", default="lymph", help="local: the task whose objectives to show")
    p.add_argument("--json", action="store_true", help="print the JSON answer")
    p.set_defaults(func=run)


def _local(dirs: list[str], task: str) -> dict:
    from lucida.models.registry import SHIPPED_DIR, Registry
    from lucida.runtime.inventory import inventory
    from lucida.runtime.models import ModelSelector

    for d in dirs:
        if not os.path.isdir(d):
            raise ModelsError(f"--dir {d}: no such folder")
    selector = ModelSelector(registry=Registry([*dirs, SHIPPED_DIR]), task=task)
    objectives = {o for _, m in selector.registry.manifests().values() for o in m.objectives}
    return inventory(selector, None, objectives)


def _remote(url: str, token: str | None) -> dict:
    from lucida.tools.hil.client import DaemonClient

    return DaemonClient(url, token, timeout_s=15).call("GET", "/models")


def run(args) -> int:
    inv = _remote(args.to, args.token) if args.to else _local(args.dir, args.task)
    if args.json:
        print(json.dumps(inv, indent=1))
        return 0
    running = inv.get("running") or {}
    if running.get("model"):
        print(
            f"running: {running['model']} ({(running.get('sha256') or '')[:12]}) at "
            f"{running.get('objective')} on {running.get('delegate')}"
        )
    print(
        "objectives: "
        + ", ".join(f"{o} -> {b or 'no model'}" for o, b in inv["objectives"].items())
    )
    print(
        f"{'bundle':<16} {'version':<9} {'task':<8} {'objectives':<16} {'edgetpu':<8} {'sha256':<13} where"
    )
    for b in inv["bundles"]:
        print(
            f"{b['name']:<16} {b['version']:<9} {b['task']:<8} {','.join(b['objectives']):<16} "
            f"{'yes' if b['edgetpu'] else 'no':<8} {(b['sha256'] or '-')[:12]:<13} {b['where']}"
        )
    return 0
