"""Build of the one C extension, `lens_core.ingest._canonscan` (the canonical raw-run scanner that
`lens_core.ingest.ndjson` uses on its fast path). Everything else is in pyproject.toml.

The extension is optional: without a C compiler the package installs and ingestion takes its
pure-Python paths (DuckDB + RE2, or the exact path), which give the same tables, slower."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "lens_core.ingest._canonscan",
            ["lens_core/ingest/_canonscan.c"],
            optional=True,
            extra_compile_args=[
                "-O2",
                "-std=c11",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-Wno-missing-field-initializers",
                "-Wno-cast-function-type",
            ],
        )
    ]
)
