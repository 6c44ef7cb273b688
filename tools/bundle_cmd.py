"""`lucida bundle`: assemble a bundle from its parts, pack it, or verify one.

    lucida bundle --from BUNDLE --edgetpu model_edgetpu.tflite --out NEW [--pack NEW.tar.gz]
    lucida bundle --cpu model.tflite --name N --task T --objectives 10x --out DIR [--report R.json]
    lucida bundle --verify DIR_OR_TAR_GZ [--json]

Assembling hashes every file into the manifest and recomputes the golden output with the engine.
Verifying checks hashes, that each model reads and fits the manifest, the compiled model's I/O,
and the golden run: exit 0 verified, 1 failed (the reason in one line).
"""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("bundle", help="assemble, pack or verify a model bundle")
    p.add_argument("--verify", metavar="BUNDLE", help="verify a bundle folder or .tar.gz")
    p.add_argument("--from", dest="from_bundle", metavar="BUNDLE", help="start from this bundle")
    p.add_argument("--cpu", help="full-integer model (cpu.tflite)")
    p.add_argument("--edgetpu", help="the same model compiled by edgetpu_compiler")
    p.add_argument("--report", help="quantization report JSON to include")
    p.add_argument("--golden-input", help="golden input tile: image or uint8 HxWx3 .npy")
    p.add_argument("--name")
    p.add_argument("--task")
    p.add_argument("--objectives", help="comma-separated, e.g. 10x,20x")
    p.add_argument("--um-per-px", type=float)
    p.add_argument("--version", dest="bundle_version", help="bundle version, e.g. 1.2.0")
    p.add_argument("--out", help="bundle folder to write")
    p.add_argument("--pack", help="also write the bundle as this .tar.gz")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from lucida.models import BundleError, pack_bundle

    from .bundling import assemble_bundle, verify_bundle

    if args.verify:
        try:
            result = verify_bundle(args.verify)
        except (ValueError, OSError) as exc:
            result = {"ok": False, "bundle": str(args.verify), "error": str(exc)}
        if args.json:
            print(json.dumps(result, indent=2))
        elif result["ok"]:
            g = result["golden"]
            err = g.get("max_abs_error")
            golden = (
                f"golden max error {err:.4f} <= {g['atol']}"
                if err is not None
                else g.get("skipped", "no golden I/O")
            )
            print(
                f"verified: bundle {result['bundle']} {result['version']}: {len(result['files'])} "
                f"files hashed, edgetpu.tflite {'yes' if result['edgetpu'] else 'no'}, {golden}"
            )
        else:
            print(f"FAILED: {result['error']}")
        return 0 if result["ok"] else 1
    if not args.out:
        raise BundleError("give --out DIR to assemble a bundle (or --verify BUNDLE)")
    objectives = [o.strip() for o in args.objectives.split(",")] if args.objectives else None
    bundle = assemble_bundle(
        args.out,
        cpu_tflite=args.cpu,
        edgetpu_tflite=args.edgetpu,
        from_bundle=args.from_bundle,
        report=args.report,
        golden_input=args.golden_input,
        name=args.name,
        task=args.task,
        objectives=objectives,
        um_per_px=args.um_per_px,
        version=args.bundle_version,
    )
    packed = str(pack_bundle(bundle.path, args.pack)) if args.pack else None
    files = {n: e.sha256 for n, e in bundle.manifest.files.items()}
    if args.json:
        print(
            json.dumps(
                {"bundle": bundle.name, "path": str(bundle.path), "files": files, "packed": packed},
                indent=2,
            )
        )
    else:
        print(f"bundle {bundle.name} {bundle.manifest.version} -> {bundle.path}")
        for n, digest in files.items():
            print(f"  {n:<22} sha256 {digest[:16]}...")
        if packed:
            print(f"packed: {packed}")
    return 0
