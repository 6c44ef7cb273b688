"""`lucida hil SCENARIO --dut emulated|remote --report DIR`: run a HIL scenario, write a report.

Exit status: 0 when every step passed or was honestly skipped, 1 when a step failed or the
device could not be set up, 2 for a bad scenario or bad arguments.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path


class HilError(ValueError):
    exit_code = 2


def register(sub) -> None:
    p = sub.add_parser("hil", help="run a hardware-in-loop scenario on an emulated or real device")
    p.add_argument("scenario", help="scenario YAML file, or a shipped name (smoke, qualify)")
    p.add_argument("--dut", choices=("emulated", "remote"), default="emulated")
    p.add_argument("--report", metavar="DIR", help="write report.json/junit.xml/report.html here")
    p.add_argument("--url", help="remote: the device daemon's URL, e.g. http://pi.local:8080")
    p.add_argument(
        "--token",
        default=os.environ.get("LUCIDA_TOKEN"),
        help="remote: bearer token ($LUCIDA_TOKEN)",
    )
    p.add_argument(
        "--serial", metavar="PORT", help="remote: bench serial port cabled to the device"
    )
    p.add_argument("--baudrate", type=int, default=9600, help="remote: --serial speed")
    p.add_argument(
        "--truth", metavar="DIR", help="remote: ground-truth masks of the replayed slide"
    )
    p.add_argument(
        "--bundle-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="emulated: extra folder of bundles for the daemon (repeatable)",
    )
    p.add_argument(
        "--daemon-cmd",
        metavar="CMD",
        help="emulated: run this instead of `python -m lucida.tools.cli run` (a build under test); "
        "the bench appends --config FILE",
    )
    p.add_argument("--fail-fast", action="store_true", help="skip the steps after a failure")
    p.add_argument("--check", action="store_true", help="validate the scenario and exit")
    p.add_argument("--quiet", action="store_true", help="print the verdict line only")
    p.set_defaults(func=run)


def _interrupt(*_):
    raise KeyboardInterrupt


def run(args) -> int:
    from lucida.tools.hil.dut import EmulatedDut, RemoteDut
    from lucida.tools.hil.report import write_report
    from lucida.tools.hil.runner import Bench
    from lucida.tools.hil.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    scratch = None
    if args.check:
        print(f"{scenario.path}: valid ({len(scenario.steps)} steps)")
        return 0
    report_dir = Path(args.report) if args.report else None
    if args.dut == "remote":
        if not args.url:
            raise HilError("--dut remote needs --url http://DEVICE:PORT")
        dut = RemoteDut(args.url, args.token, args.serial, args.truth, args.baudrate)
    else:
        if args.url or args.serial or args.truth:
            raise HilError("--url, --serial and --truth are for --dut remote")
        scratch = None if report_dir else tempfile.mkdtemp(prefix="lucida-hil-")
        work = (report_dir / "dut") if report_dir else Path(scratch)
        dut = EmulatedDut(scenario.dut, work, args.daemon_cmd, args.bundle_dir)
    echo = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    signal.signal(signal.SIGTERM, _interrupt)  # stop the emulated daemon on the way out
    try:
        report = Bench(scenario, dut, fail_fast=args.fail_fast, echo=echo).run()
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    c = report["counts"]
    where = ""
    if report_dir is not None:
        paths = write_report(report, report_dir)
        where = f"; report {paths['html']}"
        if "plots_missing" in paths:
            where += f" ({paths['plots_missing']})"
    print(
        f"lucida hil: {scenario.name} {report['verdict'].upper()}: {c['passed']} passed, "
        f"{c['failed']} failed, {c['skipped']} skipped, {c['error']} errors "
        f"in {report['duration_s']:.0f} s{where}",
        file=sys.stdout,
    )
    return 0 if report["verdict"] == "passed" else 1
