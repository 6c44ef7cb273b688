"""Host-side trials behind `lucida calibrate`: simulated captures of a pattern or a micrometer,
the accuracy evaluation on simulated registrations, and the colour and ChArUco benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

from lucida.tools.calibrate.commands import _emit, _floats


def cmd_simulate(args) -> int:
    import numpy as np
    from lucida.calibration.imageio import write_image
    from lucida.calibration.pattern import load_pattern, render_pattern
    from lucida.tools.calibrate.simulate import GEOMETRIES, random_homography, simulate_capture

    spec = load_pattern(args.pattern)
    rng = np.random.default_rng(args.seed)
    camera = tuple(int(v) for v in args.camera.lower().split("x")) if args.camera else None
    circle = _floats(args.circle, 3, "--circle") if args.circle else None
    if camera is None:
        match = [g for g in GEOMETRIES.values() if g[0] == tuple(spec.display)]
        camera = match[0][1] if match else tuple(spec.display)
        circle = circle if circle is not None else (match[0][2] if match else None)
    h, eval_pts, params = random_homography(rng, tuple(spec.display), camera, circle)
    img = simulate_capture(
        render_pattern(spec),
        h,
        camera,
        rng,
        circle,
        blur_sigma=args.blur,
        noise_dn=args.noise,
        pattern_gain=args.pattern_gain,
    )
    write_image(args.out, img)
    truth = Path(args.out).with_suffix(".truth.json")
    truth.write_text(
        json.dumps(
            {
                "homography": h.tolist(),
                "eval_camera_px": eval_pts.tolist(),
                "camera": list(camera),
                "circle": circle,
                "params": {
                    k: (float(v) if np.isscalar(v) else [float(x) for x in v])
                    for k, v in params.items()
                },
            },
            indent=1,
        )
    )
    _emit(args, {"captured": str(args.out), "truth": str(truth)}, f"wrote {args.out} and {truth}")
    return 0


def cmd_simulate_micrometer(args) -> int:
    from lucida.calibration.imageio import write_image
    from lucida.tools.calibrate.simulate import micrometer_image

    m = micrometer_image(args.seed, period_px=args.period_px)
    write_image(args.out, m.image)
    _emit(
        args,
        {"image": str(args.out), "period_px": m.period_px, "angle_deg": m.angle_deg},
        f"wrote {args.out}: period {m.period_px:.4f} px at {m.angle_deg:.2f} deg",
    )
    return 0


def cmd_evaluate(args) -> int:
    from lucida.tools.calibrate.accuracy import evaluate

    res = evaluate(args.trials, args.pixel_trials, args.seed, args.flat_frames)
    if not args.per_trial:
        res["registration"].pop("per_trial", None)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        r, p, f = res["registration"], res["pixel_size"], res["flat_field"]
        print(
            f"registration ({r['trials']} trials, {len(r['failures'])} failed): corner error mean "
            f"{r['mean_corner_error_px']} px, p95 {r['p95_corner_error_px']} px, worst {r['worst_corner_error_px']} px "
            f"(limits 0.5 / 1.5); {r['register_ms_p50']} ms per registration (p50)"
        )
        print(
            f"pixel size ({p['trials']} trials, {len(p['failures'])} failed): error mean {p['mean_error_pct']} %, "
            f"worst {p['worst_error_pct']} % (limit 0.5 %), within 3 sigma {p['within_3_sigma']}"
        )
        t = f["ms_per_frame"]
        print(
            f"flat field ({f['frame']}): non-uniformity {f['nonuniformity_before_pct']} % -> "
            f"{f['nonuniformity_after_pct']} %; per frame: CPU {t['cpu_p50']} / {t['cpu_p99']} ms "
            f"p50/p99 on one thread, wall {t['wall_p50']} / {t['wall_p99']} ms "
            f"(limit 2 ms, CPU p50 ratio {f['ratio_cpu_p50_to_limit']})"
        )
        print("PASS" if res["pass"] else "FAIL")
    return 0 if res["pass"] else 1


def cmd_bench_color(args) -> int:
    from lucida.tools.calibrate.color_bench import bench_color, load_he, reinhard_accuracy

    he = load_he(args.he) if args.he else None  # a bad folder fails before the timing
    res = bench_color(args.frames, args.seed)
    if he:
        res["reinhard_accuracy_real_he"] = reinhard_accuracy(he)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(
            f"{res['frame']} frames, normalized at the model input {res['model_input']}, "
            f"load average {res['loadavg']:.2f} (shared cores: noisy)"
        )
        rt = res["lab_round_trip"]["cpu_ms"]
        print(
            f"  Lab round trip on 1920x1080 (peer): CPU p50/p90/p99 {rt['p50']} / {rt['p90']} / "
            f"{rt['p99']} ms"
        )
        for name in ("reinhard", "macenko"):
            r = res[name]
            c, w, f = r["cpu_ms"], r["wall_ms"], r["full_frame"]["cpu_ms"]
            print(
                f"  {name}: per frame in the pipeline CPU p50/p90/p99 {c['p50']} / {c['p90']} / "
                f"{c['p99']} ms on one thread, wall p50 {w['p50']} ms; limit {r['limit_ms']} ms "
                f"(ratio {r['ratio_cpu_p50_to_limit']}); on all 1920x1080 px CPU p50 {f['p50']} ms"
            )
        acc = res.get("reinhard_accuracy_real_he")
        if acc:
            print(
                "  reinhard fast path vs the exact method on real H&E, tissue Delta E mean / p99:"
            )
            for r in acc["pairs"]:
                print(
                    f"    {r['source']} -> {r['target']}: chosen {r['form']}: "
                    + ", ".join(
                        f"{k} {r[k]['mean_delta_e']} / {r[k]['p99_delta_e']}"
                        for k in ("chosen", "rgb_map", "od_map")
                    )
                )
            print(f"    worst mean Delta E: {acc['worst_mean_delta_e']}")
        print("PASS" if res["pass"] else "FAIL")
    return 0 if res["pass"] else 1


def cmd_bench_charuco(args) -> int:
    from lucida.tools.calibrate.charuco_bench import bench_charuco

    res = bench_charuco(args.images, args.intrinsics, args.repeats)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"load average {res['loadavg']:.2f} (shared cores: times are noisy)")
        for r in res["photos"]:
            o, c = r["ours_ms"], r["opencv_ms"]
            print(
                f"  {Path(r['image']).name}: {r['corners']} corners (OpenCV {r['opencv_corners']}), "
                f"{r['mean_disagreement_px']} px apart, flat-board RMS {r['flat_board_rms_px']} px; "
                f"ours p50/p90/p99 {o['p50']}/{o['p90']}/{o['p99']} ms, OpenCV "
                f"{c['p50']}/{c['p90']}/{c['p99']} ms, ratio {r['ratio_p50']}"
            )
        print(f"ratio ours/OpenCV (p50, all photos) {res['ratio_p50_all']} (limit 1.5)")
        print("PASS" if res["pass"] else "FAIL")
    return 0 if res["pass"] else 1


# ---------------------------------------------------------------- parser
