"""The declared table tests as Dagster asset checks (one check per test, one op per table).

`build_dbt_like_checks` makes, for each table of the spec that has an asset key, one
`multi_asset_check` whose specs are that table's tests: the UI shows one check per test
(`dbt_<table>_<test>`), attached to the table's asset, blocking when its severity is `error`.
Each evaluation's description is one line that starts with its status and partition
(`fail (week 2026-11-08): 3 failing row(s) -- ...`); its metadata carries `partition`,
`status` and `subjects` (the rows judged). A test with no row to judge (an empty table, or an
empty `where` subset) is `insufficient`: a WARN failure, never a pass, and it does not block.
All the tests of a table run in one step on one DuckDB connection; the op can be subset, so a
single check can be run on its own.

The Parquet path of a table is `table_path_fn(table, partition_key)`: the partition key is the
run's (`AssetCheckExecutionContext.has_partition_key` / `.partition_key`, which read the run's
`dagster/partition` tag), `None` for an unpartitioned run; for a partition-range run every key
of the range is tested on its own and the results merged (a test passes only if it passes in
every partition; failing rows are summed, samples carry a `_partition` column).
"""

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import dagster as dg

from dbt_like_checks.runner import (
    SAMPLE_LIMIT,
    Spec,
    TestResult,
    check_name,
    compile_test,
    describe_test,
    failed_results,
    load_spec,
    run_tests,
)

TablePathFn = Callable[[str, "str | None"], "Path | str | Sequence[Path | str]"]
_MAX_CELL = 80


def _md_code(sql: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"```sql\n{sql}\n```")


def _md_cell(v: Any) -> str:
    s = "NULL" if v is None else str(v)
    s = s.replace("|", "\\|").replace("\n", " ")
    return s if len(s) <= _MAX_CELL else s[: _MAX_CELL - 1] + "…"


def sample_markdown(sample: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of sample failing rows (columns of the first row)."""
    if not sample:
        return "_no failing rows_"
    cols = list(sample[0].keys())
    lines = ["| " + " | ".join(_md_cell(c) for c in cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(_md_cell(row.get(c)) for c in cols) + " |" for row in sample]
    return "\n".join(lines)


def partition_label(partition_keys: Sequence[str | None]) -> str | None:
    """The run's partition as one string: the key, `first..last (n)` for a range, None if unpartitioned."""
    keys = [k for k in partition_keys if k is not None]
    if not keys:
        return None
    return keys[0] if len(keys) == 1 else f"{keys[0]}..{keys[-1]} ({len(keys)})"


def result_metadata(r: TestResult, partition_keys: Sequence[str | None]) -> dict[str, Any]:
    label = partition_label(partition_keys)
    md: dict[str, Any] = {
        # what the evaluation is about: its partition and its status (insufficient is never pass)
        "partition": label or "unpartitioned",
        "status": r.status,
        "subjects": r.subjects if r.subjects is not None else dg.MetadataValue.text("n/a"),
        "kind": r.kind,
        "severity": r.severity,
        "failing_rows": r.failing_rows,
        "sample": dg.MetadataValue.md(sample_markdown(r.sample)),
        "sql": _md_code(r.sql),
        "paths": dg.MetadataValue.json(list(r.paths)),
        "elapsed_ms": r.elapsed_ms,
    }
    if r.error:
        md["error"] = dg.MetadataValue.text(r.error)
    return md


def _partition_keys(context: dg.AssetCheckExecutionContext, asset_key: dg.AssetKey) -> list[str | None]:
    """The partition key(s) of the run: [key], the keys of a range, or [None] if unpartitioned."""
    if context.has_partition_key:
        return [context.partition_key]
    if context.has_partition_key_range:
        rng = context.partition_key_range
        if rng.start == rng.end:
            return [rng.start]
        try:
            return list(context.partition_keys)
        except Exception:  # an unpartitioned check: expand the range with the asset's partitions
            partitions_def = context.job_def.asset_layer.get(asset_key).partitions_def
            if partitions_def is None:
                raise
            try:  # dynamic partitions need the instance as their store
                from dagster._core.definitions.partitions.context import partition_loading_context
            except ImportError:  # pragma: no cover - private API moved
                return list(partitions_def.get_partition_keys_in_range(rng))
            with partition_loading_context(dynamic_partitions_store=context.instance):
                return list(partitions_def.get_partition_keys_in_range(rng))
    return [None]


def _paths_for(table_path_fn: TablePathFn, table: str, keys: Sequence[str | None]) -> list[Path]:
    out: list[Path] = []
    for k in keys:
        p = table_path_fn(table, k)
        if isinstance(p, (str, Path)):
            out.append(Path(p))
        else:
            out.extend(Path(x) for x in p)
    return out


def merge_partition_results(runs: Sequence[tuple[str | None, Sequence[TestResult]]]) -> list[TestResult]:
    """One result per test over several partitions: passed only if it passed in every one."""
    merged = []
    for i, first in enumerate(runs[0][1]):
        per = [(key, results[i]) for key, results in runs]
        sample = [dict(row, _partition=key) for key, r in per for row in r.sample][:SAMPLE_LIMIT]
        errors = [f"[{key}] {r.error}" for key, r in per if r.error]
        merged.append(
            dataclasses.replace(
                first,
                passed=all(r.passed for _, r in per),
                failing_rows=sum(r.failing_rows for _, r in per),
                sample=sample,
                error="; ".join(errors) or None,
                paths=tuple(p for _, r in per for p in r.paths),
                elapsed_ms=round(sum(r.elapsed_ms for _, r in per), 3),
                # insufficient only when no partition had a row to judge
                subjects=None if any(r.subjects is None for _, r in per) else sum(r.subjects or 0 for _, r in per),
            )
        )
    return merged


def _severity(result: TestResult) -> dg.AssetCheckSeverity:
    # nothing to judge is a WARN failure whatever the test's severity: not green, does not block
    if result.status == "insufficient":
        return dg.AssetCheckSeverity.WARN
    return dg.AssetCheckSeverity.ERROR if result.severity == "error" else dg.AssetCheckSeverity.WARN


def _one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def check_description(r: TestResult, partition_keys: Sequence[str | None]) -> str:
    """One line, status and partition first: `fail (week 2026-11-08): 3 failing row(s): <test>`."""
    label = partition_label(partition_keys)
    where = f" (week {label})" if label else " (unpartitioned)"
    status = r.status
    if status == "error":
        head = f"FAILED to run{where}: {r.error}"
    elif status == "fail":
        head = f"fail{where}: {r.failing_rows} failing row(s)"
    elif status == "insufficient":
        head = f"insufficient{where}: no rows of {r.table} to judge (not a pass; does not block)"
    else:
        head = f"pass{where}: {r.subjects} row(s) judged" if r.subjects is not None else f"pass{where}"
    return _one_line(f"{head} -- {r.description}")


def to_check_result(r: TestResult, asset_key: dg.AssetKey, partition_keys: Sequence[str | None]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=r.check_name,
        passed=r.status == "pass",
        severity=_severity(r),
        metadata=result_metadata(r, partition_keys),
        description=check_description(r, partition_keys),
    )


def _table_checks(
    table: str,
    asset_key: dg.AssetKey,
    table_asset_keys: Mapping[str, dg.AssetKey],
    table_path_fn: TablePathFn,
    spec: Spec,
    link_related: bool,
    partitions_def: dg.PartitionsDefinition | None = None,
) -> dg.AssetChecksDefinition:
    tests = spec.tables[table].tests
    specs = []
    by_check: dict[str, str] = {}
    related: set[str] = set()
    for test in tests:
        name = check_name(table, test.test_name)
        by_check[name] = test.test_name
        refs = [t for t in test.refs() if t != table]
        related.update(refs)
        deps = [table_asset_keys[t] for t in refs if link_related and t in table_asset_keys]
        _, sql = compile_test(table, test)
        specs.append(
            dg.AssetCheckSpec(
                name=name,
                asset=asset_key,
                description=describe_test(test),
                blocking=test.severity == "error",
                additional_deps=deps or None,
                partitions_def=partitions_def,
                metadata={
                    "dbt_like_test": test.test_name,
                    "kind": test.kind,
                    "severity": test.severity,
                    "sql": _md_code(sql),
                },
            )
        )
    needed = [table, *sorted(related)]

    @dg.multi_asset_check(
        specs=specs,
        name=f"dbt_{table}_checks",
        description=f"dbt-like data tests of {table} (dbt_like_checks/tests.yaml), run in DuckDB",
        can_subset=True,
        compute_kind="duckdb",
    )
    def _check(context: dg.AssetCheckExecutionContext) -> Iterable[dg.AssetCheckResult]:
        names = [by_check[k.name] for k in context.selected_asset_check_keys if k.name in by_check]
        keys = _partition_keys(context, asset_key)
        runs = []
        for key in keys:  # each partition is tested on its own (keys and relationships are per partition)
            try:
                paths = {t: _paths_for(table_path_fn, t, [key]) for t in needed}
            except Exception as err:  # an unknown partition, a bad data dir: fail, do not skip
                msg = f"table_path_fn failed for partition {key!r}: {type(err).__name__}: {err}"
                runs.append((key, failed_results(spec, table, names, msg)))
                continue
            runs.append((key, run_tests(paths, spec, tables=[table], names=names)))
        results = runs[0][1] if len(runs) == 1 else merge_partition_results(runs)
        failed = [r for r in results if not r.passed]
        thin = [r for r in results if r.status == "insufficient"]
        context.log.info(
            f"dbt-like tests of {table} (partition {partition_label(keys) or 'none'}): "
            f"{sum(r.status == 'pass' for r in results)}/{len(results)} passed"
            + (f"; failed: {', '.join(r.name for r in failed)}" if failed else "")
            + (f"; insufficient (no rows): {', '.join(r.name for r in thin)}" if thin else "")
        )
        for r in results:
            yield to_check_result(r, asset_key, keys)

    return _check


def build_dbt_like_checks(
    table_asset_keys: Mapping[str, dg.AssetKey],
    table_path_fn: TablePathFn,
    spec: Spec | None = None,
    *,
    link_related: bool = True,
    partitions_def: dg.PartitionsDefinition | None = None,
) -> list[dg.AssetChecksDefinition]:
    """Asset checks for the declared tests of every table that has an asset key.

    Returns one `AssetChecksDefinition` per table (a `multi_asset_check`) holding one check per
    declared test; `sum(len(d.check_keys) for d in result)` is the number of tests run.
    With `link_related`, a table's checks also depend on the tables their relationships/covers/
    sql tests read (so in a run materialising both, the checks wait for both files); turn it off
    if a related table is downstream of the checked one and blocking would create a cycle.
    `partitions_def` (the tables' own, e.g. the weekly partitions) makes the checks partitioned:
    each evaluation of a one-partition run then carries its partition, which the UI shows.
    """
    spec = spec or load_spec()
    keys = {
        t: dg.AssetKey.from_coercible(k) if not isinstance(k, dg.AssetKey) else k for t, k in table_asset_keys.items()
    }
    return [
        _table_checks(t, keys[t], keys, table_path_fn, spec, link_related, partitions_def)
        for t in spec.tables
        if t in keys and spec.tables[t].tests
    ]
