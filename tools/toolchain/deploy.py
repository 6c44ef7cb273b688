"""`lucida deploy BUNDLE --to URL --token T`: upload a bundle to a device's daemon, print its verdict.

The device unpacks it safely, verifies hashes, loads it in the background, runs the golden
health check and only then swaps it in; on any failure it keeps the running model.

BUNDLE is a folder, a .tar.gz or the name of a shipped bundle (`lymph-m`): deploying a shipped
name is how a device goes back to the model it was shipped with. The token is checked with an
empty request before anything is packed or uploaded.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("deploy", help="upload a bundle to a device's daemon (health-checked swap)")
    p.add_argument(
        "bundle", nargs="?", help="bundle folder, .tar.gz or shipped name (lymph-m: back to it)"
    )
    p.add_argument("--to", required=True, help="daemon URL, e.g. http://127.0.0.1:8080")
    p.add_argument(
        "--token", default=os.environ.get("LUCIDA_TOKEN"), help="bearer token ($LUCIDA_TOKEN)"
    )
    p.add_argument("--rollback", action="store_true", help="go back to the previous bundle instead")
    p.add_argument("--json", action="store_true", help="print the device's JSON answer only")
    p.set_defaults(func=run)


class DeployError(ValueError):
    exit_code = 1


def request(
    url: str,
    path: str,
    token: str | None,
    body=None,
    length: int | None = None,
    timeout: float = 120.0,
) -> dict:
    """POST to the daemon (with the HIL bench's client); its JSON answer, or DeployError."""
    from lucida.tools.hil.client import DaemonClient, DeviceError

    headers = None if length is None else {"Content-Length": str(length)}
    try:
        status, answer = DaemonClient(url, token, timeout_s=timeout).request(
            "POST", path, body, headers=headers
        )
    except DeviceError as exc:
        raise DeployError(str(exc)) from None
    if status >= 400:
        message = answer.get("error", answer) if isinstance(answer, dict) else answer
        raise DeployError(f"device refused ({status}): {message}")
    return answer if isinstance(answer, dict) else {"answer": answer}


# No route answers this path: the daemon's auth layer still runs first, so 401/403 means a bad
# token and 404 means the token was accepted; nothing is changed on the device.
TOKEN_PROBE = "/models/token-check"


def check_token(url: str, token: str | None) -> None:
    """DeployError now when the device refuses the token, before a bundle is uploaded."""
    from lucida.tools.hil.client import DaemonClient, DeviceError

    if not token:
        raise DeployError(
            "no token: pass --token TOKEN or set $LUCIDA_TOKEN (the device's token file)"
        )
    try:
        status, answer = DaemonClient(url, token, timeout_s=10).request("POST", TOKEN_PROBE, b"")
    except DeviceError as exc:
        raise DeployError(str(exc)) from None
    if status in (401, 403):
        message = answer.get("error", answer) if isinstance(answer, dict) else answer
        raise DeployError(f"device refused the token ({status}: {message}); nothing was uploaded")


class _Progress:
    """A file wrapper that moves a tqdm bar as http.client reads it."""

    def __init__(self, fh, bar):
        self.fh, self.bar = fh, bar

    def read(self, n=-1):
        chunk = self.fh.read(n if n and n > 0 else 1 << 16)
        self.bar.update(len(chunk))
        return chunk


def run(args) -> int:
    from lucida.models import load_bundle, pack_bundle
    from lucida.models.registry import shipped_bundle
    from tqdm import tqdm

    if args.rollback:
        answer = request(args.to, "/models/rollback", args.token)
    else:
        if not args.bundle:
            raise DeployError("name a bundle folder, .tar.gz or shipped name (or --rollback)")
        src = Path(args.bundle)
        if not src.exists():
            src = shipped_bundle(args.bundle).path  # BundleError names the shipped ones
        check_token(args.to, args.token)
        with tempfile.TemporaryDirectory() as tmp:
            if src.is_dir():
                load_bundle(src)  # verify before sending
                src = pack_bundle(src, Path(tmp) / f"{src.name}.tar.gz")
            elif not src.is_file():
                raise DeployError(f"{src}: no such bundle folder or .tar.gz")
            size = src.stat().st_size
            with (
                open(src, "rb") as fh,
                tqdm(
                    total=size,
                    unit="B",
                    unit_scale=True,
                    desc=f"upload {src.name}",
                    disable=args.json,
                ) as bar,
            ):
                answer = request(
                    args.to, "/models", args.token, body=_Progress(fh, bar), length=size
                )
    if args.json:
        print(json.dumps(answer))
    else:
        h = answer.get("health", {})
        print(
            f"device runs {answer['model']} ({answer['sha256'][:12]}) on {answer.get('delegate')}; "
            f"golden check {'ok' if h.get('ok') else 'FAILED'} "
            f"(max error {h.get('max_abs_error', 'n/a')})"
        )
    return 0
