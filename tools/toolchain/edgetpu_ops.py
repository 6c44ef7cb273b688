"""What the Edge TPU can run, as data: supported ops, the runtime version each needs, limits.

Source: Coral, "TensorFlow models on the Edge TPU", section "Supported operations"
(https://coral.ai/docs/edgetpu/models-intro/#supported-operations), and its "Model requirements":
tensors 8-bit quantized, static sizes, at most 3 non-trivial (innermost) dimensions, one subgraph.
Names are TFLite builtin op names (as `lucida.tools.toolchain.tflite_reader` reports them); the number is
the lowest Edge TPU runtime version that maps the op (1 = every version). Ops not listed run on
the CPU, and so does everything after the first of them in the graph.
"""

from __future__ import annotations

# op -> (lowest runtime version, known limitation from the Coral table)
SUPPORTED_OPS: dict[str, tuple[int, str]] = {
    "ADD": (1, ""),
    "AVERAGE_POOL_2D": (1, "no fused activation function"),
    "CONCATENATION": (1, "no fused activation; a constant input must be all zeros"),
    "CONV_2D": (1, "same dilation in x and y"),
    "DEPTHWISE_CONV_2D": (1, "same dilation in x and y (runtime >= 13)"),
    "EXPAND_DIMS": (13, ""),
    "FULLY_CONNECTED": (1, "default weights format only; one-dimensional output"),
    "L2_NORMALIZATION": (1, ""),
    "LOGISTIC": (1, ""),
    "UNIDIRECTIONAL_SEQUENCE_LSTM": (14, "unidirectional LSTM only"),
    "MAXIMUM": (1, ""),
    "MAX_POOL_2D": (1, "no fused activation function"),
    "MEAN": (1, "no reduction in the batch dimension; z-reduction needs z a multiple of 4"),
    "MINIMUM": (1, ""),
    "MUL": (1, ""),
    "PACK": (13, "no packing in the batch dimension"),
    "PAD": (1, "no padding in the batch dimension"),
    "PRELU": (13, "alpha must be one-dimensional"),
    "QUANTIZE": (13, ""),
    "REDUCE_MAX": (14, "not on the batch dimension"),
    "REDUCE_MIN": (14, "not on the batch dimension"),
    "RELU": (1, ""),
    "RELU6": (1, ""),
    "RELU_N1_TO_1": (1, ""),
    "RESHAPE": (1, "large reshapes may not be mapped"),
    "RESIZE_BILINEAR": (1, "3-D input/output; may stay on the CPU for precision"),
    "RESIZE_NEAREST_NEIGHBOR": (1, "3-D input/output; may stay on the CPU for precision"),
    "RSQRT": (14, ""),
    "SLICE": (1, ""),
    "SOFTMAX": (1, "1-D input, at most 16,000 elements"),
    "SPACE_TO_DEPTH": (1, ""),
    "SPLIT": (1, "no split in the batch dimension"),
    "SQUARED_DIFFERENCE": (14, ""),
    "SQUEEZE": (1, ""),
    "STRIDED_SLICE": (1, "all strides 1; no shrink or ellipsis masks"),
    "SUB": (1, ""),
    "SUM": (13, "no reduction in the batch dimension"),
    "TANH": (1, ""),
    "TRANSPOSE": (14, "no transpose of the batch dimension"),
    "TRANSPOSE_CONV": (13, ""),
}

# The custom op that edgetpu_compiler writes into a compiled model (the mapped part of the graph).
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"

# On-chip SRAM that caches parameters (Coral: "roughly 8 MB"); beyond it weights stream from host.
ON_CHIP_BYTES = 8 * 1024 * 1024

# Parameter layout of edgetpu_compiler 16, fitted on real compile logs of models the tests rebuild
# (tests/data/edgetpu_memory.yaml; docs/edgetpu_check.md "Parameter layout"): a weight op's
# parameters are stored as rows of output channels, padded to a multiple of PARAM_ROWS; each row
# holds the kernel taps x input depth padded to a multiple of PARAM_DEPTH (bytes, int8), plus
# PARAM_CHANNEL_BYTES of requantization data when the weights are quantized per channel (none
# when per tensor); int32 biases and shape operands take no parameter memory of their own.
PARAM_ROWS = 64
PARAM_DEPTH = 4
PARAM_CHANNEL_BYTES = 8
# Read from a real compiled MobileNetV2 (Coral's mobilenet_v2_1.0_224_quant_edgetpu.tflite,
# compiler 2.0; its parameter blob, docs/edgetpu_check.md "Depthwise"): weights quantized per
# tensor with a non-zero int32 bias store the bias, PARAM_BIAS_BYTES per padded channel (a 256-byte
# block of 64 int32 before each 64 channels); a 3x3 depthwise convolution stores
# PARAM_DW_CHANNEL_BYTES per channel (32 bytes of taps, 8 of per-channel data), the channels padded
# to a multiple of PARAM_DW_ROWS.
PARAM_BIAS_BYTES = 4
PARAM_DW_CHANNEL_BYTES = 40
PARAM_DW_ROWS = 32
# Parameter bytes the compiler caches on chip, filled in op order, and the largest single op it
# caches; the rest streams. Fitted: every cached/streamed split in the evidence holds for a cache
# of 7.63-7.80 MiB and a per-op limit of 6.80-7.09 MiB; these are the middles.
PARAM_CACHE_BYTES = 8_093_696  # 7.72 MiB
PARAM_OP_CACHE_BYTES = 7_282_688  # 6.95 MiB

# Ops the real compiler once left on the CPU with "Operation is otherwise supported, but not
# mapped due to some unspecified limitation" and no cause the thread gives (the 7 rows of
# tests/data/edgetpu_evidence.yaml marked uncertain), while logs show it mapping the same op type
# elsewhere. `check` still maps them (the upper bound) but marks its verdict low-confidence where
# the op looks like the refused one; where the op type is too common to flag (64 LOGISTIC, 18
# CONCATENATION and 5 QUANTIZE mapped in one yolov7-tiny log; a QUANTIZE at each end of every
# integer model) it only adds a note to the report.
# op -> source of the unexplained refusal.
UNEXPLAINED_REFUSALS = {
    "TRANSPOSE": "edgetpu#433 (compiler 16; no shape or permutation given)",
    "TRANSPOSE_CONV": "edgetpu#686 (compiler 16; one of four in a 512 px U-Net, output 64x64 px "
    "or more; the other three mapped)",
    "SPLIT": "edgetpu#219 (compiler 14.1; SPLIT maps in edgetpu#461)",
    "MUL": "edgetpu#219 (compiler 14.1; MUL maps in yolov7#1672 with compiler 16)",
    "QUANTIZE": "edgetpu#537 (compiler 16; four of them, position not given)",
    "LOGISTIC": "edgetpu#490 (compiler 16; no shape or position given)",
    "CONCATENATION": "ultralytics/hub#1136 (compiler 16; 1 of 17 in one model, no shape given)",
}
UNEXPLAINED_NOTE_ONLY = ("LOGISTIC", "CONCATENATION", "QUANTIZE")  # too common to flag each
UNEXPLAINED_TRANSPOSE_CONV_PX = 64 * 64  # output pixels from which TRANSPOSE_CONV is flagged
UNEXPLAINED_OLD_RUNTIME = (
    13  # SPLIT/MUL flagged when targeting this runtime (compiler 14.1) or older
)

# Default runtime version we target (libedgetpu 16.0 / compiler 16 implement runtime 14).
DEFAULT_RUNTIME_VERSION = 14

# Input tensors above this size are known to make edgetpu_compiler fail or split the graph.
LARGE_INPUT_ELEMENTS = 1024 * 1024 * 3
LARGE_INPUT_SIDE = 1024

# Ops that are meant to stay on the CPU after the Edge TPU part (a model whose only CPU ops are
# these, and what follows them, is "mapped except its tail"): arg-max of a segmentation map,
# detection post-processing, decoders. Custom ops count when their name says post-processing.
TAIL_OPS = frozenset(
    {"ARG_MAX", "ARG_MIN", "DEQUANTIZE", "QUANTIZE", "CAST", "TOPK_V2", "GATHER", "GATHER_ND",
     "NON_MAX_SUPPRESSION_V4", "NON_MAX_SUPPRESSION_V5", "SOFTMAX"}
)  # fmt: skip
TAIL_CUSTOM = r"(?i)post.?process|decod|nms|non.?max"

# Where the evidence stops: beyond these sizes the compiler has left the op on the CPU in public
# logs, below them it has mapped it (tests/data/edgetpu_evidence.yaml). Between: "uncertain".
RESIZE_UNCERTAIN_PX = 256 * 256  # output height x width (edgetpu#597 1024x1024: CPU)
MEAN_UNCERTAIN_PX = 128 * 128  # reduced height x width (edgetpu#461 256x128: CPU, 64x128: TPU)
LSTM_UNCERTAIN_FEATURES = 900  # input features (edgetpu#598: fails above ~900-1000)
TRANSPOSE_CONV_UNCERTAIN_BYTES = 1 << 20  # weights (edgetpu#684: 2 MiB kernel stayed on CPU)
RESHAPE_UNCERTAIN_ELEMENTS = 1 << 20  # Coral: "certain reshapes might not be mapped" when large
SOFTMAX_MAX_ELEMENTS = 16000  # Coral: 1-D input with at most 16,000 elements

# Status texts edgetpu_compiler prints per op, for the reasons `check` gives.
STATUS_MAPPED = "Mapped to Edge TPU"
STATUS_UNSUPPORTED = "Operation not supported"
STATUS_DTYPE = "Operation is working on an unsupported data type"
STATUS_RANK = "Tensor has unsupported rank (up to 3 innermost dimensions mapped)"
STATUS_SUBGRAPH = "More than one subgraph is not supported"
STATUS_LIMIT = "Operation is otherwise supported, but not mapped due to some unspecified limitation"
STATUS_VERSION = "Operation version not supported"

# Highest op version compilers before 16 (runtime < 14) accepted, where logs show a refusal
# ("Operation version not supported", "Didn't find op for builtin opcode ... version '3'").
MAX_VERSION_BEFORE_14 = {"RESIZE_NEAREST_NEIGHBOR": 2, "RESIZE_BILINEAR": 2, "TRANSPOSE_CONV": 2}
