"""Build of the two C extensions: `lens_core.ingest._canonscan` (the canonical raw-run scanner that
`lens_core.ingest.ndjson` uses on its fast path) and `lens_core.measures._trecscan` (the TREC
qrels + run reader of `lens-eval trec`). Everything else is in pyproject.toml.

Both are optional: without a C compiler the package installs, ingestion takes its pure-Python
paths (DuckDB + RE2, or the exact path) and `lens-eval trec` its polars readers, which give the
same tables and values, slower."""

from setuptools import Extension, setup

_FLAGS = [
    "-O2",
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
    "-Wno-missing-field-initializers",
    "-Wno-cast-function-type",
]

setup(
    ext_modules=[
        Extension(
            "lens_core.ingest._canonscan", ["lens_core/ingest/_canonscan.c"], optional=True, extra_compile_args=_FLAGS
        ),
        Extension(
            "lens_core.measures._trecscan", ["lens_core/measures/_trecscan.c"], optional=True, extra_compile_args=_FLAGS
        ),
    ]
)
