"""Build the Cython hot paths.

Every ``stream/**/*.pyx`` is compiled; pyproject.toml holds the metadata. Compiled modules are
required at run time: each is wrapped by a small Python class and ``stream doctor`` /
``tests/unit/test_compiled.py`` check that the compiled module, not a Python fallback, is loaded.
"""
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

here = Path(__file__).parent
# river-exact floating point: no fused multiply-adds (river's Rust never contracts a * b + c)
EXTRA_ARGS = {"stream/detect/_adwin.pyx": ["-ffp-contract=off"], "stream/detect/_close.pyx": ["-ffp-contract=off"]}
extensions = [
    Extension(
        str(p.with_suffix("")).replace("/", "."),
        [str(p)],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3", *EXTRA_ARGS.get(p.as_posix(), [])],
    )
    for p in sorted(Path("stream").rglob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )
)
