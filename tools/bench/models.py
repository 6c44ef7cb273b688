"""`lucida bench models --out DIR`: build one bundle per output kind for `lucida bench engine`.

Real architectures at real sizes with random weights (Keras MobileNetV2, weights=None), full-int8
quantized on seeded noise: what matters for the engine's overhead is the output's size and kind
next to a realistic invoke, not what the model has learnt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# name -> (builder, kwargs, input size, bundle flags)
BENCH_MODELS = {
    # logits out: the engine's softmax (dequantize + exp + normalize) over 513 x 513 x 21
    "deeplab21-softmax": ("deeplab_like", {"head": "logits"}, 513, {"positive": [15]}),
    "deeplab21-argmax": (
        "deeplab_like",
        {"head": "argmax"},
        513,
        {"classes": 21, "positive": [15]},
    ),
    "classifier1000": ("mobilenet_classifier", {}, 224, {}),
    "gleason4": ("gleason_like", {}, 512, {"positive": [1, 2, 3]}),
}


def build_bench_models(out: str, names: list[str] | None = None, samples: int = 4) -> dict:
    """Build the bench bundles under `out`; returns {name: bundle path}."""
    import lucida.tools.demo.tiny_models as tiny_models
    from lucida.tools.toolchain.bundle import build_bundle, infer_output
    from lucida.tools.toolchain.convert import quantize_keras, tensor_quant

    rng = np.random.default_rng(0)
    built = {}
    for name in names or list(BENCH_MODELS):
        fn, kwargs, size, flags = BENCH_MODELS[name]
        model = getattr(tiny_models, fn)(size=size, **kwargs)
        calib = [rng.integers(0, 256, (size, size, 3)).astype(np.float32) for _ in range(samples)]
        tfl = quantize_keras(model, calib)
        q = tensor_quant(tfl)
        labels = (
            [{"name": f"class {k}"} for k in range(flags["classes"])]
            if "classes" in flags
            else None
        )
        output, _ = infer_output(q, tfl, labels=labels, positive=flags.get("positive"))
        bundle = build_bundle(
            Path(out) / name,
            name=name,
            task="bench",
            objectives=["10x"],
            cpu_tflite=tfl,
            golden_input=calib[0].astype(np.uint8),
            output=output,
        )
        built[name] = str(bundle.path)
    return built
