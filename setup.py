"""C extensions (everything else is in pyproject.toml).

Each extension is optional: without a compiler the build goes on and the pure-Python
fallbacks run (the modules say so once when imported).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build what can be built; a failing extension leaves its pure-Python fallback."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all
            print(f"warning: C extensions not built ({exc}); pure-Python fallbacks run")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"warning: {ext.name} not built ({exc}); its pure-Python fallback runs")


setup(
    ext_modules=[
        # batched TUN reads/writes, recvmmsg/sendmmsg for the site worker (pcsite_lite.fastio)
        Extension(
            "pcsite_lite._fastio",
            sources=["pcsite_lite/_fastio.c"],
            extra_compile_args=["-O2", "-Wall"],
            optional=True,
        ),
        # the codec accelerator: BLAKE2s, the per-hop job, build-and-seal, the SDK's senders
        # (pcsock.wire, pcsite_lite.pipeline, pcsock.socket; pure-Python reference in wire.py)
        Extension(
            "pcsock._accel",
            sources=["pcsock/_accel.c"],
            depends=["pcsock/_accel.h"],
            extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra"],
            optional=True,
        ),
        # the worker's native form-1 switch (pcsite_lite.native): the accelerator's plain-C hop
        # (pcsock/_accel.c without its Python glue) and a circuit table mirrored from Python
        Extension(
            "pcsite_lite._switch",
            sources=["pcsite_lite/_switch.c", "pcsock/_accel.c"],
            depends=["pcsock/_accel.h"],
            include_dirs=["pcsock"],
            define_macros=[("PC_ACCEL_NO_PYTHON", "1")],
            extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden"],
            optional=True,
        ),
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
