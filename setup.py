"""Build hook for the one compiled part: `protocol._sigbatch` (see protocol/sigbatch.py).

Everything else is in pyproject.toml. Without a C compiler the build of that module fails
and the install goes on without it: protocol.sigbatch then checks signatures one by one.
"""

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that reports a failed compile instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, no Python headers: fall back at run time
            print(f"warning: protocol._sigbatch not built ({exc}); signatures checked one by one")

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"warning: {ext.name} not built ({exc}); signatures checked one by one")


setup(
    cffi_modules=["protocol/_sigbatch_build.py:ffi"],
    cmdclass={"build_ext": OptionalBuildExt},
)
