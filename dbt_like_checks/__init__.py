"""dbt-like table-level data tests: declared in YAML, run as SQL in DuckDB over Parquet.

`load_spec` and `run_tests` are pure (no dagster import); `build_dbt_like_checks` (imported
lazily) turns each declared test into a Dagster asset check.
"""

from __future__ import annotations

from typing import Any

from dbt_like_checks.checks import build_dbt_like_checks as _build
from dbt_like_checks.runner import (
    Spec,
    SpecError,
    TestResult,
    bind_against_contracts,
    check_name,
    compile_test,
    load_spec,
    run_tests,
    summarize,
)

__all__ = [
    "Spec",
    "SpecError",
    "TestResult",
    "bind_against_contracts",
    "build_dbt_like_checks",
    "check_name",
    "compile_test",
    "load_spec",
    "run_tests",
    "summarize",
]


def build_dbt_like_checks(*args: Any, **kwargs: Any):
    """See `dbt_like_checks.checks.build_dbt_like_checks` (imported here lazily: dagster)."""

    return _build(*args, **kwargs)
