"""dbt-like table tests: YAML spec, SQL compilation, DuckDB runs over Parquet, Dagster checks."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dbt_like_checks import (
    SpecError,
    bind_against_contracts,
    compile_test,
    load_spec,
    run_tests,
)
from dbt_like_checks.runner import (
    CONTRACT_SCHEMAS,
    Spec,
    TableSpec,
    expand_placeholders,
    spec_from_dict,
)
from lens_core.common import contracts

SLA = 150.0


# ---------------------------------------------------------------------------------------------
# A small, valid set of canonical tables
# ---------------------------------------------------------------------------------------------
def valid_rows() -> dict[str, list[dict[str, Any]]]:
    systems = {"base": "0123456789abcdef", "test": "fedcba9876543210"}
    queries = {  # qid -> (suite, intent, language)
        "q1": ("core", "symbol", "python"),
        "q2": ("core", "nl", "go"),
        "q3": ("tail", "nl", "python"),
    }
    lat = {
        ("base", "q1"): 40.0,
        ("base", "q2"): 200.0,
        ("base", "q3"): 90.0,
        ("test", "q1"): 35.0,
        ("test", "q2"): 120.0,
        ("test", "q3"): 80.0,
    }
    ts = dt.datetime(2024, 1, 8, 12, 0, tzinfo=dt.timezone.utc)
    agg, hits, per_query = [], [], []
    for system, cfg in systems.items():
        att = hashlib.sha256(f"raw-{system}".encode()).hexdigest()
        for qid, (suite, intent, language) in queries.items():
            lat_ms = lat[(system, qid)]
            ok = lat_ms <= SLA
            spans = [("cpython", f"Lib/{qid}.py", 10, 20), ("cpython", f"Lib/{qid}_b.py", 1, 5)]
            if system == "test":
                spans = spans[::-1]
            for rank, (repo, path, s, e) in enumerate(spans, start=1):
                hits.append(
                    dict(
                        run_id="r1",
                        system=system,
                        qid=qid,
                        rank=rank,
                        repo=repo,
                        path=path,
                        start_line=s,
                        end_line=e,
                        score=10.0 - rank,
                        why_lex=True,
                        why_struct=rank == 1,
                        why_sem=False,
                        shard=rank,
                        in_sla=ok,
                    )
                )
            agg.append(
                dict(
                    run_id="r1",
                    system=system,
                    cfg_hash=cfg,
                    qid=qid,
                    suite=suite,
                    intent=intent,
                    language=language,
                    req_ts=ts,
                    sla_ms=SLA,
                    lat_ms=lat_ms,
                    within_sla=ok,
                    n_hits=2,
                    n_hits_in_sla=2 if ok else 0,
                    shards_total=2,
                    shards_timed_out=0,
                    probes=3,
                    cpu_ms=1.5,
                    hedged=False,
                    why_mix_lex=1.0,
                    why_mix_struct=0.5,
                    why_mix_sem=0.0,
                    error=None,
                    attestation_sha256=att,
                )
            )
            s1 = 1.0 if system == "base" else 0.0
            per_query.append(
                dict(
                    run_id="r1",
                    system=system,
                    qid=qid,
                    suite=suite,
                    intent=intent,
                    language=language,
                    lat_ms=lat_ms,
                    ndcg_10=0.8 if s1 else 0.6,
                    recall_50=1.0,
                    sla_recall_50=1.0 if ok else 0.0,
                    mrr_10=1.0 if s1 else 0.5,
                    success_1=s1,
                    success_5=1.0,
                    success_10=1.0,
                )
            )
    pool: dict[tuple, dict[str, Any]] = {}
    for h in hits:
        if not h["in_sla"]:
            continue
        key = (h["qid"], h["repo"], h["path"], h["start_line"], h["end_line"])
        row = pool.setdefault(
            key, dict(zip(("qid", "repo", "path", "start_line", "end_line"), key), systems=[], best_rank=h["rank"])
        )
        row["systems"] = sorted(set(row["systems"]) | {h["system"]})
        row["best_rank"] = min(row["best_rank"], h["rank"])
    qrels = [
        dict({k: p[k] for k in ("qid", "repo", "path", "start_line", "end_line")}, rel=i % 4, source="sim")
        for i, p in enumerate(pool.values())
    ]
    scores = []
    for system in systems:
        for sl in ("all", "intent=nl", "language=python", "suite=core"):
            scores.append(dict(system=system, slice=sl, metric="ndcg_10", mean=0.7, ci_low=0.6, ci_high=0.8, n=3))
            scores.append(dict(system=system, slice=sl, metric="lat_p95", mean=180.0, ci_low=None, ci_high=None, n=3))
    return dict(agg=agg, hits=hits, pool=list(pool.values()), qrels=qrels, per_query=per_query, scores=scores)


def write_tables(
    root: Path, rows: dict[str, list[dict[str, Any]]], drop: dict[str, list[str]] | None = None
) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for table, schema in CONTRACT_SCHEMAS.items():
        t = pa.Table.from_pylist(rows[table], schema=schema)
        for col in (drop or {}).get(table, []):
            t = t.drop_columns([col])
        paths[table] = root / f"{table}.parquet"
        pq.write_table(t, paths[table], compression="zstd")
    return paths


@pytest.fixture(scope="module")
def spec():
    return load_spec()


def failed(results) -> set[str]:
    return {f"{r.table}.{r.name}" for r in results if not r.passed}


def by_name(results, qualified: str):
    table, name = qualified.split(".", 1)
    return next(r for r in results if r.table == table and r.name == name)


# ---------------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------------
def test_spec_loads_covers_every_table_and_binds_against_contracts(spec):
    assert set(spec.tables) == set(CONTRACT_SCHEMAS)
    kinds = {t: {test.kind for test in ts.tests} for t, ts in spec.tables.items()}
    for t in spec.tables:
        assert {"not_null", "unique", "row_count"} <= kinds[t], t
    assert "relationships" in kinds["hits"] and "relationships" in kinds["qrels"]
    assert "accepted_values" in kinds["qrels"]
    assert any(t.severity == "warn" for _, t in spec.tests())
    # every compiled test binds on empty tables of the contract schemas (no column typos)
    assert bind_against_contracts(spec) == []
    for table, test in spec.tests():
        name, sql = compile_test(table, test)
        assert name == test.test_name and "SELECT" in sql


def test_binding_catches_a_column_typo():
    bad = spec_from_dict(
        {
            "tables": {
                "agg": {
                    "tests": [
                        {"expression": {"name": "typo", "sql": "lat_msec >= 0"}},
                        {"not_null": ["run_id", "sytem"]},
                    ]
                }
            }
        }
    )
    problems = bind_against_contracts(bad)
    assert [p[1] for p in problems] == ["typo", "not_null"]
    assert "lat_msec" in problems[0][2] and "sytem" in problems[1][2]


@pytest.mark.parametrize(
    "entry, needle",
    [
        ({"uniq": ["qid"]}, "unknown test kind 'uniq'"),
        ({"unique": []}, "columns must not be empty"),
        ({"unique": {"columns": ["qid"], "severity": "fatal"}}, "severity"),
        ({"accepted_values": {"column": "rel"}}, "needs a non-empty `values`"),
        ({"row_count": {"min": 5, "max": 1}}, "min 5 > max 1"),
        ({"row_count": [1, 2]}, "list shorthand is only for not_null and unique"),
        ({"expression": {"sql": "x > 0"}}, "name"),
        ({"expression": {"name": "bad name", "sql": "x > 0"}}, "not a plain identifier"),
        ({"relationships": {"columns": ["qid"], "to": "nowhere"}}, "unknown table 'nowhere'"),
        ({"not_null": ["qid"], "unique": ["qid"]}, "exactly one key"),
        ({"unique": {"columns": ["qid"], "colums": ["x"]}}, "colums"),
        ({"expression": {"name": "m", "sql": "metric IN ${NO_SUCH_TUPLE}"}}, "NO_SUCH_TUPLE"),
    ],
)
def test_malformed_entry_gives_clear_error_naming_table_and_test(tmp_path, entry, needle):
    p = tmp_path / "bad.yaml"
    import yaml

    p.write_text(yaml.safe_dump({"tables": {"qrels": {"tests": [{"not_null": ["qid"]}, entry]}}}))
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    msg = str(ei.value)
    assert str(p) in msg and "tables.qrels.tests[1]" in msg and needle in msg, msg


def test_duplicate_test_names_and_bad_files(tmp_path):
    with pytest.raises(SpecError, match=r"duplicate test name 'not_null'.*tests\[0\]"):
        spec_from_dict({"tables": {"agg": {"tests": [{"not_null": ["a"]}, {"not_null": ["b"]}]}}})
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("tables: {agg: [\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(tmp_path / "broken.yaml")
    with pytest.raises(SpecError, match="`tests:` list"):
        spec_from_dict({"tables": {"agg": {"checks": []}}})


def test_placeholders_expand_from_contracts():
    sql = expand_placeholders("metric IN ${QUALITY_METRICS}")
    assert sql == "metric IN (" + ", ".join(f"'{m}'" for m in contracts.QUALITY_METRICS) + ")"


# ---------------------------------------------------------------------------------------------
# Running over Parquet
# ---------------------------------------------------------------------------------------------
def test_all_tests_pass_on_valid_tables(tmp_path, spec):
    paths = write_tables(tmp_path, valid_rows())
    results = run_tests(paths, spec)
    assert len(results) == len(spec)
    assert failed(results) == set(), [(r.name, r.error, r.sample) for r in results if not r.passed]
    assert all(r.error is None and r.failing_rows == 0 and r.sample == [] for r in results)


def _set(table: str, idx: int, **values) -> Callable[[dict], None]:
    def f(rows):
        rows[table][idx].update(values)

    return f


def _orphan_hit(rows):
    rows["hits"].append(dict(rows["hits"][0], qid="q99", rank=1))


def _dup_agg(rows):
    rows["agg"].append(copy.deepcopy(rows["agg"][1]))


def _drop_per_query(rows):
    del rows["per_query"][4]


def _rank_gap(rows):
    for h in rows["hits"]:
        if h["system"] == "base" and h["qid"] == "q3" and h["rank"] == 2:
            h["rank"] = 3


def _late_hit_in_sla(rows):
    assert rows["hits"][2]["qid"] == rows["agg"][1]["qid"] == "q2"  # base/q2: 200 ms > SLA
    rows["hits"][2]["in_sla"] = True
    rows["agg"][1]["n_hits_in_sla"] = 1  # keep agg's count consistent: only the SLA rule breaks


BREAKS = {
    # name: (mutation, the one failing test, check on its sample)
    "null": (
        _set("agg", 2, req_ts=None),
        "agg.not_null",
        lambda s: s[0]["null_columns"] == "req_ts" and s[0]["qid"] == "q3",
    ),
    "duplicate_key": (
        _dup_agg,
        "agg.unique_key",
        lambda s: s == [{"run_id": "r1", "system": "base", "qid": "q2", "n_rows": 2}],
    ),
    "unaccepted_value": (
        _set("qrels", 0, rel=5),
        "qrels.accepted_values_rel",
        lambda s: s == [{"rel": 5, "n_rows": 1}],
    ),
    "orphan_hit": (
        _orphan_hit,
        "hits.relationships_to_agg",
        lambda s: s == [{"run_id": "r1", "system": "base", "qid": "q99", "n_rows": 1}],
    ),
    "uncovered_query": (
        _drop_per_query,
        "per_query.covers_agg",
        lambda s: s == [{"run_id": "r1", "system": "test", "qid": "q2", "n_rows": 1}],
    ),
    "row_count": (
        lambda rows: rows["pool"].clear(),
        "pool.row_count",
        lambda s: s[0]["row_count"] == 0 and s[0]["min_rows"] == 1,
    ),
    "within_sla": (
        _set("agg", 0, within_sla=False),
        "agg.within_sla_matches_latency",
        lambda s: s[0]["qid"] == "q1" and s[0]["lat_ms"] == 40.0,
    ),
    "ci_brackets": (
        _set("scores", 0, ci_low=0.75),
        "scores.ci_brackets_mean",
        lambda s: s[0]["ci_low"] == 0.75 and s[0]["mean"] == 0.7,
    ),
    "slice_format": (
        _set("scores", 2, slice="tier=gold"),
        "scores.slice_format",
        lambda s: s[0]["slice"] == "tier=gold",
    ),
    "cfg_hash_changes": (
        _set("agg", 1, cfg_hash="00000000000000aa"),
        "agg.one_cfg_hash_per_system",
        lambda s: s[0]["system"] == "base" and s[0]["n_cfg_hashes"] == 2,
    ),
    "late_hit_in_sla": (
        _late_hit_in_sla,
        "hits.not_in_sla_when_query_late",
        lambda s: s[0]["qid"] == "q2" and s[0]["lat_ms"] == 200.0,
    ),
}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_each_break_fails_exactly_its_test(tmp_path, spec, case):
    mutate, expected, sample_ok = BREAKS[case]
    rows = valid_rows()
    mutate(rows)
    results = run_tests(write_tables(tmp_path, rows), spec)
    assert failed(results) == {expected}
    r = by_name(results, expected)
    assert r.error is None and r.failing_rows >= 1 and r.severity == "error"
    assert 1 <= len(r.sample) <= 5 and sample_ok(r.sample), r.sample


def test_warn_test_fails_with_warn_severity(tmp_path, spec):
    rows = valid_rows()
    _rank_gap(rows)
    results = run_tests(write_tables(tmp_path, rows), spec)
    assert failed(results) == {"hits.ranks_contiguous"}
    r = by_name(results, "hits.ranks_contiguous")
    assert r.severity == "warn" and not r.blocking
    assert r.sample == [{"run_id": "r1", "system": "base", "qid": "q3", "n_hits": 2, "min_rank": 1, "max_rank": 3}]


def test_sample_is_capped_at_five_rows(tmp_path, spec):
    rows = valid_rows()
    for h in rows["hits"]:
        h["score"] = float("nan")
    results = run_tests(write_tables(tmp_path, rows), spec, tables=["hits"])
    r = by_name(results, "hits.score_finite")
    assert not r.passed and r.failing_rows == len(rows["hits"]) == 12 and len(r.sample) == 5
    assert r.sample[0]["score"] == "nan"  # JSON-safe


def test_missing_file_fails_every_test_of_that_table_with_reason(tmp_path, spec):
    paths = write_tables(tmp_path, valid_rows())
    paths["pool"].unlink()
    results = run_tests(paths, spec)
    pool_results = [r for r in results if r.table == "pool"]
    assert failed(results) == {f"pool.{r.name}" for r in pool_results}
    assert all("Parquet file not found" in r.error and str(paths["pool"]) in r.error for r in pool_results)
    # a table with no path at all is a failure too, not a skip
    del paths["qrels"]
    results = run_tests(paths, spec, tables=["qrels"])
    assert results and all((not r.passed) and "no Parquet path" in r.error for r in results)
    # a missing *related* table fails the relationship test (the hits file alone cannot pass it)
    results = run_tests({"hits": paths["hits"]}, spec, tables=["hits"])
    assert by_name(results, "hits.relationships_to_agg").error.startswith("related table")
    assert by_name(results, "hits.rank_positive").passed


def test_missing_column_is_a_failed_test_with_reason(tmp_path, spec):
    paths = write_tables(tmp_path, valid_rows(), drop={"qrels": ["source"], "scores": ["ci_low"]})
    results = run_tests(paths, spec)
    assert failed(results) == {
        "qrels.not_null",
        "scores.ci_bounds_paired",
        "scores.ci_brackets_mean",
        "scores.quality_in_unit_interval",
    }
    assert "lacks column(s) source" in by_name(results, "qrels.not_null").error
    assert "ci_low" in by_name(results, "scores.ci_brackets_mean").error


def test_corrupt_file_and_quoted_path(tmp_path, spec):
    weird = tmp_path / 'it\'s a "dir"'
    paths = write_tables(weird, valid_rows())
    assert failed(run_tests(paths, spec, tables=["agg", "hits"])) == set()
    paths["agg"].write_bytes(b"not parquet")
    results = run_tests(paths, spec, tables=["agg"])
    assert all((not r.passed) and "cannot read" in r.error for r in results)


def test_subset_by_table_and_name_and_multi_file_tables(tmp_path, spec):
    rows = valid_rows()
    a = write_tables(tmp_path / "a", rows)
    b = write_tables(tmp_path / "b", rows)
    # the same rows in two files: read as one table, the keys are now duplicated
    results = run_tests({t: [a[t], b[t]] for t in a}, spec, tables=["agg"], names=["unique_key", "row_count"])
    assert [(r.name, r.passed, r.failing_rows) for r in results] == [("unique_key", False, 6), ("row_count", True, 0)]
    with pytest.raises(SpecError, match="no tests declared"):
        run_tests(a, spec, tables=["nope"])


# ---------------------------------------------------------------------------------------------
# Dagster asset checks
# ---------------------------------------------------------------------------------------------
dg = pytest.importorskip("dagster")


def _table_keys():
    return {t: dg.AssetKey(["lens", t]) for t in CONTRACT_SCHEMAS}


def _stub_assets(root: Path, partitions_def, break_fn=None):
    """One multi-asset that writes the six tables (valid, or broken for partition 2024-01-14)."""

    @dg.multi_asset(
        specs=[dg.AssetSpec(k) for k in _table_keys().values()], partitions_def=partitions_def, name="stub_tables"
    )
    def stub_tables(context):
        pk = context.partition_key if context.has_partition_key else None
        rows = valid_rows()
        if break_fn and pk == "2024-01-14":
            break_fn(rows)
        write_tables(root / (pk or "unpartitioned"), rows)
        for k in _table_keys().values():
            yield dg.MaterializeResult(asset_key=k)

    return stub_tables


def test_checks_build_one_per_declared_test(tmp_path, spec):
    from dbt_like_checks import build_dbt_like_checks

    defs = build_dbt_like_checks(_table_keys(), lambda t, pk: tmp_path / f"{t}.parquet", spec)
    check_specs = [s for d in defs for s in d.check_specs]
    assert len(check_specs) == len(spec) == sum(len(d.check_keys) for d in defs)
    names = {s.key.name for s in check_specs}
    assert len(names) == len(spec) and "dbt_qrels_accepted_values_rel" in names
    for s in check_specs:
        table = s.asset_key.path[-1]
        test = next(t for t in spec.tables[table].tests if f"dbt_{table}_{t.test_name}" == s.key.name)
        assert s.blocking == (test.severity == "error")
        assert s.description and s.metadata["severity"] == test.severity
    hits_rel = next(s for s in check_specs if s.key.name == "dbt_hits_relationships_to_agg")
    assert {d.asset_key for d in hits_rel.additional_deps} == {dg.AssetKey(["lens", "agg"])}
    # only tables with an asset key get checks; the definitions load together with the assets
    assert len(build_dbt_like_checks({"agg": dg.AssetKey("agg")}, lambda t, pk: "x", spec)) == 1
    dg.Definitions(assets=[_stub_assets(tmp_path, None)], asset_checks=defs).get_repository_def()


def test_checks_run_per_partition_and_report_severity(tmp_path, spec):
    from dbt_like_checks import build_dbt_like_checks

    weekly = dg.WeeklyPartitionsDefinition(start_date="2024-01-07")
    requested: list[tuple[str, str | None]] = []

    def path_fn(table, pk):
        requested.append((table, pk))
        return tmp_path / (pk or "unpartitioned") / f"{table}.parquet"

    def breaks(rows):
        rows["qrels"][0]["rel"] = 7  # blocking error
        _rank_gap(rows)  # warn

    # a few of the declared tests (a Dagster run of all of them twice is slow for a unit test;
    # the unpartitioned test below runs them all)
    keep = {
        "agg": {"unique_key"},
        "hits": {"relationships_to_agg", "ranks_contiguous"},
        "qrels": {"accepted_values_rel", "row_count"},  # row_count: min 0, passes on an empty table
        "scores": {"slice_format"},
    }
    small = Spec(
        {
            t: TableSpec(t, tuple(x for x in ts.tests if x.test_name in keep[t]))
            for t, ts in spec.tables.items()
            if t in keep
        },
        spec.source,
    )
    assert len(small) == 6
    assets = _stub_assets(tmp_path, weekly, breaks)
    checks = build_dbt_like_checks(_table_keys(), path_fn, small)
    instance = dg.DagsterInstance.ephemeral()

    ok = dg.materialize([assets, *checks], partition_key="2024-01-07", instance=instance)
    evals = ok.get_asset_check_evaluations()
    assert ok.success and len(evals) == len(small) and all(e.passed for e in evals)
    assert requested and {pk for _, pk in requested} == {"2024-01-07"}

    bad = dg.materialize([assets, *checks], partition_key="2024-01-14", instance=instance, raise_on_error=False)
    assert not bad.success  # a blocking check failed with ERROR
    evals = {e.check_name: e for e in bad.get_asset_check_evaluations()}
    failed_checks = {n for n, e in evals.items() if not e.passed}
    assert failed_checks == {"dbt_qrels_accepted_values_rel", "dbt_hits_ranks_contiguous"}
    rel = evals["dbt_qrels_accepted_values_rel"]
    assert rel.severity == dg.AssetCheckSeverity.ERROR and rel.blocking
    assert rel.metadata["failing_rows"].value == 1 and "| 7 | 1 |" in rel.metadata["sample"].value
    assert rel.metadata["sql"].value.startswith("```sql") and rel.metadata["partition"].value == "2024-01-14"
    warn = evals["dbt_hits_ranks_contiguous"]
    assert warn.severity == dg.AssetCheckSeverity.WARN and not warn.blocking

    # a partition-range run (single-run backfill) of the checks alone: each partition is tested
    # on its own and the results merged
    requested.clear()
    rng = dg.materialize(
        [assets, *checks],
        instance=instance,
        raise_on_error=False,
        selection=dg.AssetSelection.checks(*(k for c in checks for k in c.check_keys)),
        tags={"dagster/asset_partition_range_start": "2024-01-07", "dagster/asset_partition_range_end": "2024-01-14"},
    )
    evals = {e.check_name: e for e in rng.get_asset_check_evaluations()}
    assert {n for n, e in evals.items() if not e.passed} == failed_checks
    assert {pk for _, pk in requested} == {"2024-01-07", "2024-01-14"}
    rel = evals["dbt_qrels_accepted_values_rel"]
    assert rel.metadata["partition"].value == "2024-01-07..2024-01-14 (2)"
    assert "| 7 | 1 | 2024-01-14 |" in rel.metadata["sample"].value


def test_checks_run_unpartitioned_and_fail_on_missing_file(tmp_path, spec):
    from dbt_like_checks import build_dbt_like_checks

    seen: set = set()

    def path_fn(table, pk):
        seen.add(pk)
        if table == "pool":
            raise KeyError("no pool for this partition")
        # scores is never written there: its checks must fail, not pass silently
        return tmp_path / ("elsewhere" if table == "scores" else "unpartitioned") / f"{table}.parquet"

    checks = build_dbt_like_checks(_table_keys(), path_fn, spec)
    res = dg.materialize(
        [_stub_assets(tmp_path, None), *checks], raise_on_error=False, instance=dg.DagsterInstance.ephemeral()
    )
    evals = res.get_asset_check_evaluations()
    assert seen == {None} and len(evals) == len(spec)
    bad = {e.check_name for e in evals if not e.passed}
    assert bad == {n for n in (e.check_name for e in evals) if n.startswith("dbt_scores_") or n.startswith("dbt_pool_")}
    e = next(e for e in evals if e.check_name == "dbt_scores_row_count")
    assert "Parquet file not found" in e.metadata["error"].value
    e = next(e for e in evals if e.check_name == "dbt_pool_unique_key")
    assert "table_path_fn failed" in e.metadata["error"].value and "no pool" in e.metadata["error"].value
