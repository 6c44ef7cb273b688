"""Metadata and packages are in setup.cfg; this file only declares the one compiled part."""

from setuptools import Extension, setup

# The softmax decode kernel (runtime/softmax_kernel.c): plain C without the Python API, loaded
# with ctypes. Optional: where no C compiler exists the install goes on, and the decoder runs
# the same sums in NumPy and OpenCV (runtime/outputs.py).
setup(
    ext_modules=[
        Extension(
            "lucida.runtime._softmax_kernel",
            ["runtime/softmax_kernel.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
