"""`lucida calibrate ...`: display registration, pixel size, flat-field, white balance,
colour targets and calibration profiles.

Exit codes: 0 ok; 2 bad input; 3 pattern not found; 4 too few points; 5 degenerate
homography; 6 unreadable image; 7 objective not in the profile; 8 invalid profile;
9 measurement failed (blank field too dark, ...); 10 refused: the input is not what the
measurement needs (not a ruling, too little tissue, not a blank field) or its own
cross-checks disagree, so no figure is given rather than a wrong one.
"""

from __future__ import annotations

import json


def _floats(text: str, n: int, what: str) -> tuple[float, ...]:
    from lucida.calibration import CalibrationError

    try:
        vals = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise CalibrationError(f"{what} {text!r} must be {n} comma-separated numbers")
    return vals


def _emit(args, data: dict, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
    else:
        print(text)


def _profile_target(args):
    """(profile, path) when --profile is given (loaded or new), else (None, None)."""
    from lucida.calibration import CalibrationError
    from lucida.calibration.profile import Profile, load_or_new

    if not getattr(args, "profile", None):
        return None, None
    if not getattr(args, "objective", None):
        raise CalibrationError(
            "--profile needs --objective (e.g. --objective 10x) to know which section to write"
        )
    path = Profile.resolve(args.profile)
    return load_or_new(path, getattr(args, "microscope", None)), path


# ---------------------------------------------------------------- commands


def cmd_pattern(args) -> int:
    from lucida.calibration.pattern import make_pattern, parse_size, save_pattern

    spec = make_pattern(parse_size(args.display), squares_short=args.squares)
    png, side = save_pattern(spec, args.out)
    _emit(
        args,
        {
            "pattern": str(png),
            "sidecar": str(side),
            "squares": list(spec.squares),
            "square_px": spec.square_px,
            "points": len(spec.points),
            "dictionary": spec.dictionary,
        },
        f"wrote {png} and {side}: {spec.squares[0]}x{spec.squares[1]} squares of {spec.square_px} px, "
        f"{len(spec.points)} corners",
    )
    return 0


def _draw_registered(captured, spec, result, out_path) -> None:
    """Camera photo with the pattern corners mapped back through the fitted homography
    (green: inliers, red: outliers) and the display outline."""
    import cv2
    import numpy as np
    from lucida.calibration.homography import apply_homography
    from lucida.calibration.imageio import write_image

    img = captured.copy()
    g = np.linalg.inv(result.homography)
    w, h = spec.display
    outline = apply_homography(g, np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]))
    cv2.polylines(
        img, [np.round(outline * 4).astype(np.int32)], True, (255, 255, 0), 2, cv2.LINE_AA, 2
    )
    pts = apply_homography(g, spec.corner_points())
    for p in pts:
        cv2.drawMarker(img, tuple(int(v) for v in np.round(p)), (0, 255, 0), cv2.MARKER_CROSS, 9, 1)
    for c, ok in zip(result.camera_px, result.inlier_mask):
        if not ok:
            cv2.circle(img, tuple(int(v) for v in np.round(c)), 6, (255, 0, 0), 1)
    write_image(out_path, img)


def cmd_display(args) -> int:
    from lucida.calibration import register_display
    from lucida.calibration.imageio import read_image
    from lucida.calibration.pattern import load_pattern
    from lucida.calibration.profile import DisplaySpec, RegistrationInfo, _now

    spec = load_pattern(args.pattern)
    captured = read_image(args.captured, "captured image")
    circle = _floats(args.circle, 3, "--circle") if args.circle else None
    prof, path = _profile_target(args)
    result = register_display(captured, spec, circle=circle, refine=not args.no_refine)
    data = result.to_json(with_points=not args.no_points)
    if args.overlay:
        _draw_registered(captured, spec, result, args.overlay)
        data["overlay"] = str(args.overlay)
    if prof is not None:
        prof.update_section(
            args.objective,
            homography=result.homography.tolist(),
            registration=RegistrationInfo(
                method="auto",
                rms_px=round(result.rms_px, 4),
                inliers=result.inliers,
                camera_size=result.camera_size,
                updated=_now(),
            ),
            display=DisplaySpec(
                width=spec.display[0], height=spec.display[1], eyepiece_circle=circle
            ),
        )
        data["profile"] = str(prof.save(path))
    _emit(
        args,
        data,
        f"registered: rms {result.rms_px:.3f} display px over {result.inliers}/{len(result.ids)} corners"
        + (f"; saved {data['profile']} [{args.objective}]" if prof is not None else ""),
    )
    return 0


def cmd_pixel_size(args) -> int:
    from lucida.calibration import measure_pixel_size
    from lucida.calibration.imageio import read_gray_native

    image = read_gray_native(args.image, "micrometer image")  # 12/16-bit kept as is
    prof, path = _profile_target(args)
    res = measure_pixel_size(image, args.spacing_um)
    data = res.to_json()
    if args.objective:
        data["objective"] = args.objective
    if prof is not None:
        prof.update_section(
            args.objective, um_per_px=res.um_per_px, um_per_px_uncertainty=res.um_per_px_uncertainty
        )
        data["profile"] = str(prof.save(path))
    _emit(
        args,
        data,
        f"{res.um_per_px:.5f} +- {res.um_per_px_uncertainty:.5f} um/px "
        f"(period {res.period_px:.3f} px over {res.lines} rulings)",
    )
    return 0


def cmd_flat(args) -> int:
    from lucida.calibration import FlatField, FrameCorrector, nonuniformity
    from lucida.calibration.imageio import read_image

    frames = [read_image(f, "blank-field frame") for f in args.frames]
    darks = [read_image(f, "dark frame") for f in args.dark] if args.dark else None
    prof, path = _profile_target(args)
    ff = FlatField.from_frames(frames, darks, smooth_px=args.smooth_px)
    wb = ff.white_balance()
    corrected = FrameCorrector(ff, wb).apply(frames[-1])
    data = {
        "frames": len(frames),
        "dark_frames": len(darks or []),
        "size": list(ff.size),
        "white_balance": [round(v, 5) for v in wb],
        "nonuniformity_before_pct": round(100 * nonuniformity(frames[-1]), 3),
        "nonuniformity_after_pct": round(100 * nonuniformity(corrected), 3),
    }
    if prof is not None:
        data["flat"] = prof.store_array(path, args.objective, "flat", ff.flat)
        if ff.dark is not None:
            data["dark"] = prof.store_array(path, args.objective, "dark", ff.dark)
        else:
            prof.update_section(args.objective, dark=None)
        prof.update_section(args.objective, white_balance=wb)
        data["profile"] = str(prof.save(path))
    _emit(
        args,
        data,
        f"flat from {len(frames)} frame(s): non-uniformity {data['nonuniformity_before_pct']}% -> "
        f"{data['nonuniformity_after_pct']}%, white balance {data['white_balance']}",
    )
    return 0


def cmd_white_balance(args) -> int:
    from lucida.calibration import from_patch, grey_world
    from lucida.calibration.imageio import read_image

    image = read_image(args.image)
    prof, path = _profile_target(args)
    if args.patch:
        gains = from_patch(image, tuple(int(v) for v in _floats(args.patch, 4, "--patch")))
    else:
        gains = grey_world(image)
    data = {
        "white_balance": [round(v, 5) for v in gains],
        "method": "patch" if args.patch else "grey-world",
    }
    if prof is not None:
        prof.update_section(args.objective, white_balance=gains)
        data["profile"] = str(prof.save(path))
    _emit(args, data, f"white balance gains (r, g, b): {data['white_balance']}")
    return 0


def cmd_color_target(args) -> int:
    from lucida.calibration import fit_stain_target, fit_target
    from lucida.calibration.imageio import read_image

    images = [read_image(f, "training-domain image") for f in args.images]
    if args.method == "reinhard":
        stats = fit_target(images, names=[str(f) for f in args.images])
        data = {
            "method": "reinhard",
            "lab_mean": [round(v, 4) for v in stats.mean],
            "lab_std": [round(v, 4) for v in stats.std],
        }
    else:
        t = fit_stain_target(images[0], what=f"image {str(args.images[0])!r}")
        data = {
            "method": "macenko",
            "stains": [[round(v, 5) for v in s] for s in t.stains],
            "max_conc": [round(v, 5) for v in t.max_conc],
            "background": t.background,
        }
    _emit(args, {"color_norm": data}, json.dumps({"color_norm": data}))
    return 0


def cmd_manual(args) -> int:
    import numpy as np
    from lucida.calibration import ManualRegistration
    from lucida.calibration.imageio import read_image, write_image
    from lucida.calibration.manual import find_target
    from lucida.calibration.pattern import parse_size
    from lucida.calibration.profile import DisplaySpec, RegistrationInfo, _now

    display = parse_size(args.display)
    target, camera = None, parse_size(args.camera) if args.camera else None
    if args.captured:
        img = read_image(args.captured, "camera image of the target slide")
        camera = (img.shape[1], img.shape[0])
        target = find_target(img)
    if camera is None:
        camera = display
    circle = _floats(args.circle, 3, "--circle") if args.circle else None
    prof, path = _profile_target(args)
    base = None
    if prof is not None and args.objective in prof.objectives:
        base = prof.objectives[args.objective].homography_array()
    session = ManualRegistration(camera, display, base=base, eyepiece_circle=circle, target=target)
    outcome = "save"
    if args.keys is not None:
        for ch in args.keys:
            got = session.handle_key(ch)
            if got in ("save", "cancel"):
                outcome = got
                break
    else:  # interactive: a window shows what the micro-display would show
        import cv2

        name = "lucida calibrate manual (arrows/WASD move, +/- scale, [ ] rotate, Shift fine, Enter save, Esc cancel)"
        cv2.namedWindow(name, cv2.WINDOW_NORMAL)
        while True:
            cv2.imshow(name, cv2.cvtColor(session.render(), cv2.COLOR_RGB2BGR))
            got = session.handle_key(cv2.waitKeyEx(50))
            if got in ("save", "cancel"):
                outcome = got
                break
        cv2.destroyWindow(name)
    if args.render:
        write_image(args.render, session.render())
    data = {**session.state(), "outcome": outcome, "target_found": target is not None}
    if outcome == "save" and prof is not None:
        prof.update_section(
            args.objective,
            homography=np.asarray(session.homography()).tolist(),
            registration=RegistrationInfo(
                method="manual",
                camera_size=camera,
                adjustment=dict(vars(session.adjustment)),
                updated=_now(),
            ),
            display=DisplaySpec(width=display[0], height=display[1], eyepiece_circle=circle),
        )
        data["profile"] = str(prof.save(path))
    _emit(
        args,
        data,
        json.dumps(data["adjustment"])
        + (f"; saved {data['profile']}" if "profile" in data else ""),
    )
    return 0 if outcome == "save" else 1


def cmd_show(args) -> int:
    from lucida.calibration.profile import Profile

    prof = Profile.load(args.profile)
    if args.objective:
        sec = prof.section(args.objective)
        data = {
            "microscope": prof.microscope,
            "revision": prof.revision,
            "objective": args.objective,
            **sec.model_dump(mode="json"),
        }
        try:
            data["um_per_px_effective"], data["um_per_px_source"] = prof.um_per_px(args.objective)
        except ValueError:
            pass
    else:
        data = prof.model_dump(mode="json")
    _emit(args, data, json.dumps(data, indent=2))
    return 0


def register(sub) -> None:
    from lucida.tools.calibrate import trials

    p = sub.add_parser(
        "calibrate", help="display registration, pixel size, flat-field, colour, profiles"
    )
    cs = p.add_subparsers(dest="calibrate_command", metavar="STEP")
    cs.required = True

    def add(name, func, help_):
        q = cs.add_parser(name, help=help_, description=help_)
        q.add_argument("--json", action="store_true", help="print JSON")
        q.set_defaults(func=func)
        return q

    def with_profile(q, objective_help="objective whose section to write, e.g. 10x"):
        q.add_argument("--objective", help=objective_help)
        q.add_argument(
            "--profile",
            help="profile folder (profile.json inside) or file; the result is saved there",
        )
        q.add_argument("--microscope", help="microscope name for a new profile")

    q = add(
        "pattern",
        cmd_pattern,
        "write the ChArUco target to show on the micro-display (+ JSON sidecar)",
    )
    q.add_argument("--display", required=True, help="display size WxH, e.g. 1920x1080")
    q.add_argument(
        "--out", required=True, help="pattern PNG path (the sidecar is the same name .json)"
    )
    q.add_argument(
        "--squares", type=int, default=10, help="squares along the short side (default 10)"
    )

    q = add(
        "display", cmd_display, "register camera -> display from a photo of the projected pattern"
    )
    q.add_argument("--pattern", required=True, help="the pattern PNG (its .json sidecar is read)")
    q.add_argument(
        "--captured", required=True, help="camera photo of the pattern shown on the display"
    )
    q.add_argument("--circle", help="eyepiece field cx,cy,r in display px (optional)")
    q.add_argument("--overlay", help="write the photo with the registered pattern drawn on it")
    q.add_argument(
        "--no-refine", action="store_true", help="corners only, skip ECC area refinement"
    )
    q.add_argument(
        "--no-points", action="store_true", help="leave the per-point list out of the JSON"
    )
    with_profile(q)

    q = add("pixel-size", cmd_pixel_size, "measure um per px from a stage micrometer image")
    q.add_argument("--image", required=True, help="photo of the stage micrometer")
    q.add_argument("--spacing-um", type=float, required=True, help="ruling pitch in um (e.g. 10)")
    with_profile(q)

    q = add("flat", cmd_flat, "flat-field (and white balance) from blank-field frames")
    q.add_argument(
        "--frames", nargs="+", required=True, help="blank-field frames (no slide or clear glass)"
    )
    q.add_argument("--dark", nargs="*", help="dark frames (lamp off)")
    q.add_argument(
        "--smooth-px", type=float, default=2.0, help="Gaussian smoothing of the flat, px"
    )
    with_profile(q)

    q = add(
        "white-balance", cmd_white_balance, "white balance gains (grey world, or a reference patch)"
    )
    q.add_argument("--image", required=True)
    q.add_argument("--patch", help="x,y,w,h of a neutral reference patch, px")
    with_profile(q)

    q = add(
        "color-target",
        cmd_color_target,
        "colour-normalization target of a training domain (manifest color_norm)",
    )
    q.add_argument("--images", nargs="+", required=True, help="images of the training domain")
    q.add_argument("--method", choices=("reinhard", "macenko"), default="reinhard")

    q = add(
        "bench-charuco",
        trials.cmd_bench_charuco,
        "bench: ChArUco detection vs OpenCV's CharucoDetector on photos of a printed board",
    )
    q.add_argument("--images", nargs="+", required=True, help="photos of a 5x7 DICT_6X6_250 board")
    q.add_argument("--intrinsics", help="OpenCV calibration YAML of the camera (for undistortion)")
    q.add_argument("--repeats", type=int, default=15)

    q = add(
        "bench-color",
        trials.cmd_bench_color,
        "bench: colour normalization per 1080p frame (p50/p90/p99) against its limits",
    )
    q.add_argument("--frames", type=int, default=30)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument(
        "--he",
        help="folder of real H&E images: also print the fast Reinhard path's error (Delta E) "
        "against the exact method for each pair (e.g. ../shared/realdata/he)",
    )

    q = add(
        "manual", cmd_manual, "manual registration: nudge circles onto a target slide (ARM-style)"
    )
    q.add_argument("--display", required=True, help="display size WxH")
    q.add_argument(
        "--camera", help="camera size WxH (default: from --captured, else the display size)"
    )
    q.add_argument(
        "--captured", help="camera image of the concentric-circle target (to find its centre)"
    )
    q.add_argument("--circle", help="eyepiece field cx,cy,r in display px")
    q.add_argument(
        "--keys", help="scripted keys instead of a window (e.g. 'aaww++]' then Enter implied)"
    )
    q.add_argument("--render", help="write the final display image (PNG)")
    with_profile(q)

    q = add(
        "show", cmd_show, "validate and print a calibration profile (or one objective's section)"
    )
    q.add_argument("--profile", required=True)
    q.add_argument("--objective")

    q = add(
        "simulate",
        trials.cmd_simulate,
        "host: simulate the camera's photo of a pattern over tissue",
    )
    q.add_argument("--pattern", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--camera", help="camera size WxH (default by display geometry)")
    q.add_argument("--circle", help="eyepiece field cx,cy,r in display px")
    q.add_argument("--blur", type=float, default=1.2, help="Gaussian blur sigma, camera px")
    q.add_argument("--noise", type=float, default=3.0, help="noise, DN")
    q.add_argument(
        "--pattern-gain", type=float, default=0.8, help="pattern brightness, fraction of full scale"
    )

    q = add(
        "simulate-micrometer",
        trials.cmd_simulate_micrometer,
        "host: simulate a stage micrometer image",
    )
    q.add_argument("--out", required=True)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--period-px", type=float, help="ruling pitch in px (default random 6..70)")

    q = add(
        "evaluate",
        trials.cmd_evaluate,
        "bench: seeded registration, pixel-size and flat-field trials",
    )
    q.add_argument("--trials", type=int, default=50, help="registration trials")
    q.add_argument("--pixel-trials", type=int, default=50, help="pixel-size trials")
    q.add_argument("--flat-frames", type=int, default=16, help="blank frames for the flat")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--per-trial", action="store_true", help="include per-trial results in the JSON")
