"""`lucida audit --since 1h`: print what the eyepiece showed, from the daemon's audit trail."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class AuditError(ValueError):
    exit_code = 2


def register(sub) -> None:
    p = sub.add_parser("audit", help="print the audit trail: what the eyepiece showed, and when")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--config", default="/etc/lucida/config.yaml", help="the daemon's config (its state_dir)"
    )
    where.add_argument("--file", help="an audit.jsonl file instead")
    p.add_argument("--since", help="ISO time (UTC unless it has an offset) or an age: 30m, 2h, 1d")
    p.add_argument("--json", action="store_true", help="print the records as JSON lines")
    p.set_defaults(func=run)


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """'2026-11-29T10:00' / '2026-11-29 10:00:00+01:00' / '90m' -> an aware UTC datetime."""
    if not text:
        return None
    now = now or datetime.now(timezone.utc)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        return now - timedelta(seconds=float(m.group(1)) * UNITS[m.group(2)])
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AuditError(
            f"--since {text!r}: expected an ISO time (2026-11-29T10:00) or an age (30m, 2h, 1d)"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _path(args) -> Path:
    if args.file:
        return Path(args.file)
    from lucida.runtime.config import load_config
    from lucida.runtime.daemon import AUDIT_FILE

    return Path(load_config(args.config).state_dir, "audit", AUDIT_FILE)


def describe(rec: dict) -> str:
    """One line for a person: time, objective, what was shown, model, threshold, calibration."""
    t = rec["ts"].replace("T", " ")[:19] + " UTC"
    obj = rec.get("objective") or "-"
    if rec["shown"] != "overlay":
        return f"{t}  {obj:>4}  nothing shown ({rec.get('reason') or 'blank'})"
    unit = rec.get("area_unit", "um2")
    sha = (rec.get("model_sha256") or "")[:12] or "-"
    thr = rec.get("threshold")
    cal = rec.get("calibration_revision")
    return (
        f"{t}  {obj:>4}  {rec.get('regions', 0)} region(s), {rec.get('total_area', 0):,.0f} {unit}"
        f"  model {rec.get('model')} {sha}"
        f"  threshold {'-' if thr is None else f'{thr:.2f}'}"
        f"  calibration r{'-' if cal is None else cal}"
    )


def run(args) -> int:
    from lucida.runtime.audit import audit_files, read_audit

    path = _path(args)
    if not audit_files(path):
        raise AuditError(
            f"{path}: no audit trail (the daemon writes it once it has shown something)"
        )
    since = parse_since(args.since)
    n = 0
    for rec in read_audit(path, since):
        print(json.dumps(rec) if args.json else describe(rec))
        n += 1
    if not args.json and n == 0:
        print(f"nothing recorded since {since.isoformat(timespec='seconds')}")
    return 0
