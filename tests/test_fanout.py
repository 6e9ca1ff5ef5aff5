"""Collection and ingestion fanned out per system (issue 22 item 2), and the steps that read the
week's hits one system at a time (item 1).

- the weekly job maps `raw_runs.collect_systems` and `agg_and_hits.ingest_system` over the systems
  of the run (one step per system; systems on a live endpoint with interleaving on: one step);
- a system whose raw run is bad fails its own ingestion step only; the other systems' steps
  succeed and nothing downstream is written (the week's hits stay absent);
- a system whose collection fails once is retried alone (the others are collected once);
- the per-system parts merge into the one hits file the chain always had (same rows, same order);
- `pool`, `per_query`, `calibration`, `hero_decisions` and `canary` get a scan of the hits file,
  not the table.
"""

from __future__ import annotations

import dagster as dg
import polars as pl
import pyarrow.parquet as pq
import pytest

from lens_assets.collection import collection_groups_for, mapping_keys
from lens_core.common import contracts
from lens_core.common.tables import SchemaError, merge_parquet, write_parquet
from lens_core.ingest.ndjson import combine_agg
from resources.data_source import LensDataSource
from tests.conftest import own_dirs

PARTITION = "2026-11-29"


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------
def test_mapping_keys_are_valid_and_unique():
    keys = mapping_keys(["lens_v22", "pack.a-1", "pack_a_1", "ünï"])
    assert keys["lens_v22"] == "lens_v22"
    assert len(set(keys.values())) == 4
    for k in keys.values():
        assert k and all(c.isalnum() and c.isascii() or c == "_" for c in k), k


def test_collection_groups_interleave_only_live_endpoints():
    names = ["a", "b", "c"]
    assert collection_groups_for("sim", True, names) == [["a"], ["b"], ["c"]]
    assert collection_groups_for("local", True, names) == [["a", "b", "c"]]
    assert collection_groups_for("prod", False, names) == [["a"], ["b"], ["c"]]
    assert collection_groups_for("local", True, ["a"]) == [["a"]]


def test_the_weekly_job_maps_collection_and_ingestion_and_scans_hits():
    from lens_assets.definitions import defs

    job = defs.resolve_job_def("weekly_lens_job")
    g = job.graph
    ops = {str(h): g.get_node(h).definition for h in g.iterate_node_handles()}
    assert "raw_runs.collect_systems" in ops and "agg_and_hits.ingest_system" in ops
    # the mapped ops are fed by dynamic outputs
    assert ops["raw_runs.collection_groups"].output_defs[0].is_dynamic
    assert ops["agg_and_hits.ingest_plan"].output_defs[0].is_dynamic
    assert ops["agg_and_hits.ingest_system"].retry_policy is None  # a data error is not retried
    for name in ("pool", "per_query", "calibration", "hero_decisions", "canary"):
        d = ops[name]
        hits_in = next(i for i in d.input_defs if i.name == "hits")
        assert hits_in.dagster_type.typing_type is pl.LazyFrame, name


# ---------------------------------------------------------------------------------------------
# The gathering step
# ---------------------------------------------------------------------------------------------
def _hits(system: str, n: int) -> pl.DataFrame:
    schema = contracts.HITS_SCHEMA
    rows = {f.name: [None] * n for f in schema}
    t = pl.DataFrame(rows).with_columns(
        pl.lit("w1").alias("run_id"),
        pl.lit(system).alias("system"),
        pl.Series("qid", [f"q{i // 5}" for i in range(n)]),
        pl.Series("rank", [i % 5 + 1 for i in range(n)]),
        pl.lit("r").alias("repo"),
        pl.Series("path", [f"p{i}.py" for i in range(n)]),
        pl.lit(1).alias("start_line"),
        pl.lit(2).alias("end_line"),
        pl.Series("score", [1.0 / (i + 1) for i in range(n)]),
        pl.lit(True).alias("in_sla"),
    )
    return t


def test_merge_keeps_rows_order_and_one_row_group_set_per_system(tmp_path):
    parts = []
    for s, n in (("b", 40), ("a", 25), ("c", 10)):
        p = tmp_path / f"{s}.parquet"
        write_parquet(_hits(s, n), p, schema=contracts.HITS_SCHEMA, name="hits")
        parts.append(p)
    out = merge_parquet(parts, tmp_path / "week" / "hits.parquet", contracts.HITS_SCHEMA)
    merged = pl.read_parquet(out.path)
    expect = pl.concat([pl.read_parquet(p) for p in parts])
    assert out.rows == 75 and merged.equals(expect)
    # a reader that filters one system finds it in row groups of its own
    f = pq.ParquetFile(out.path)
    systems_per_group = [
        {f.metadata.row_group(i).column(f.schema_arrow.get_field_index("system")).statistics.min}
        for i in range(f.num_row_groups)
    ]
    assert all(len(s) == 1 for s in systems_per_group)
    assert not list((tmp_path / "week").glob(".hits.parquet*"))  # no temporary left


def test_merge_refuses_a_part_that_drifts_and_writes_nothing(tmp_path):
    good = tmp_path / "a.parquet"
    write_parquet(_hits("a", 5), good, schema=contracts.HITS_SCHEMA, name="hits")
    bad = tmp_path / "b.parquet"
    _hits("b", 5).drop("score").write_parquet(bad)
    with pytest.raises(Exception):
        merge_parquet([good, bad], tmp_path / "out" / "hits.parquet", contracts.HITS_SCHEMA)
    assert not (tmp_path / "out" / "hits.parquet").exists()


def test_combine_agg_refuses_a_record_ingested_twice():
    row = {c: None for c in contracts.AGG_SCHEMA.names} | {"run_id": "w", "system": "s", "qid": "q1"}
    one = pl.DataFrame([row]).cast({"run_id": pl.String, "system": pl.String, "qid": pl.String})
    with pytest.raises(SchemaError, match="duplicate record for run_id=w system=s qid=q1"):
        combine_agg([one, one])


# ---------------------------------------------------------------------------------------------
# End to end (simulator, small suite): a bad system fails alone; a flaky one is retried alone
# ---------------------------------------------------------------------------------------------
BROKEN = "lexical_pack_a__exactdef"
CALLS: dict[str, int] = {}


class BrokenOneSystem(LensDataSource):
    """The simulator, except that one system's raw run ends with a record that is not JSON."""

    def collect_week(self, systems, queries, run_id, t0_ms, k, paths, **kw):
        got = super().collect_week(systems, queries, run_id, t0_ms, k, paths, **kw)
        if BROKEN in paths:
            with open(paths[BROKEN], "a") as f:
                f.write("{not json\n")
        return got


class FlakyOneSystem(LensDataSource):
    """The simulator, except that one system's first collection attempt fails."""

    def collect_week(self, systems, queries, run_id, t0_ms, k, paths, **kw):
        for s in systems:
            CALLS[s.name] = CALLS.get(s.name, 0) + 1
        if BROKEN in paths and CALLS[BROKEN] == 1:
            raise ConnectionError(f"{BROKEN}: endpoint reset the connection")
        return super().collect_week(systems, queries, run_id, t0_ms, k, paths, **kw)


class RefusedOneSystem(LensDataSource):
    """The simulator, except that the endpoint refuses one system's credentials."""

    def collect_week(self, systems, queries, run_id, t0_ms, k, paths, **kw):
        from lens_core.collect.client import LensAuthRefused

        for s in systems:
            CALLS[s.name] = CALLS.get(s.name, 0) + 1
        if BROKEN in paths:
            raise LensAuthRefused(f"{BROKEN}: the endpoint refused the credentials (HTTP 401)")
        return super().collect_week(systems, queries, run_id, t0_ms, k, paths, **kw)


def test_transient_failures_only_are_retried():
    from lens_assets.collection import transient
    from lens_core.collect.client import LensAuthRefused, LensUnreachable

    assert transient(ConnectionResetError("reset")) and transient(TimeoutError()) and transient(LensUnreachable("x"))
    assert not transient(LensAuthRefused("401")) and not transient(ValueError("bad record"))


def _steps(res_events) -> dict[str, str]:
    out = {}
    for ev in res_events:
        if ev.step_key and ev.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
            out[ev.step_key] = ev.event_type_value
    return out


def _run(tmp_path, source: LensDataSource):
    from lens_assets.definitions import defs
    from lens_assets.run import dagster_instance

    d = tmp_path / "data"
    d.mkdir()
    with own_dirs(d, tmp_path / "home"), dagster_instance() as instance:
        resources = dict(defs.resources or {})
        resources["lens_source"] = source
        res = dg.materialize(
            [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)],
            selection=[dg.AssetKey(k) for k in ("query_suites", "ground_truth", "raw_runs", "agg", "hits")],
            partition_key=PARTITION,
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
        return d, res, _steps(res.all_events)


def test_a_bad_system_fails_its_own_ingestion_step_only(tmp_path):
    d, res, steps = _run(tmp_path, BrokenOneSystem(source="sim", queries_per_suite=8))
    assert not res.success
    key = mapping_keys([BROKEN])[BROKEN]
    assert steps[f"agg_and_hits.ingest_system[{key}]"] == "STEP_FAILURE"
    others = [k for k in steps if k.startswith("agg_and_hits.ingest_system[") and key not in k]
    assert len(others) >= 8 and all(steps[k] == "STEP_SUCCESS" for k in others)
    assert "agg_and_hits.ingest_gather" not in steps  # nothing gathered, nothing written
    assert not (d / "staging" / "hits" / f"{PARTITION}.parquet").exists()
    assert not (d / "staging" / "agg" / f"{PARTITION}.parquet").exists()


def test_a_flaky_system_is_retried_alone(tmp_path):
    CALLS.clear()
    d, res, steps = _run(tmp_path, FlakyOneSystem(source="sim", queries_per_suite=8))
    assert res.success, [e.message for e in res.all_events if e.event_type_value == "STEP_FAILURE"]
    assert CALLS[BROKEN] == 2
    assert all(n == 1 for s, n in CALLS.items() if s != BROKEN), CALLS
    retried = [e for e in res.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    key = mapping_keys([BROKEN])[BROKEN]
    assert [e.step_key for e in retried] == [f"raw_runs.collect_systems[{key}]"]
    hits = pl.read_parquet(d / "staging" / "hits" / f"{PARTITION}.parquet")
    agg = pl.read_parquet(d / "staging" / "agg" / f"{PARTITION}.parquet")
    assert hits["system"].n_unique() == agg["system"].n_unique() >= 9
    # the week's tables hold the systems in the run's order, each system's rows together
    order = hits.select(pl.col("system").rle_id()).to_series()
    assert order.n_unique() == hits["system"].n_unique()


def test_a_refused_system_is_not_retried(tmp_path):
    CALLS.clear()
    d, res, steps = _run(tmp_path, RefusedOneSystem(source="sim", queries_per_suite=8))
    assert not res.success
    assert CALLS[BROKEN] == 1  # a refusal is not retried
    assert not [e for e in res.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    key = mapping_keys([BROKEN])[BROKEN]
    assert steps[f"raw_runs.collect_systems[{key}]"] == "STEP_FAILURE"


SELECTION = ("query_suites", "ground_truth", "raw_runs", "agg", "hits")


def fanout_job() -> dg.JobDefinition:
    """The collection and ingestion assets as a job (reconstructable: re-execution loads it)."""
    from lens_assets.definitions import defs

    resources = dict(defs.resources or {})
    resources["lens_source"] = BrokenOneSystem(source="sim", queries_per_suite=8)
    job = dg.define_asset_job(
        "fanout_job", selection=[dg.AssetKey(k) for k in SELECTION], executor_def=dg.in_process_executor
    )
    return dg.Definitions(
        assets=[a for a in defs.assets if isinstance(a, dg.AssetsDefinition)], resources=resources, jobs=[job]
    ).resolve_job_def("fanout_job")


def test_a_run_re_executed_from_failure_reruns_only_the_failed_system(tmp_path):
    from lens_assets.run import dagster_instance

    d = tmp_path / "data"
    d.mkdir()
    with own_dirs(d, tmp_path / "home"), dagster_instance() as instance:
        first = dg.execute_job(dg.reconstructable(fanout_job), instance, tags={"dagster/partition": PARTITION})
        assert not first.success
        key = mapping_keys([BROKEN])[BROKEN]
        # the operator fixes the bad record (here: drops the line that is not JSON) and re-executes
        raw = next(d.glob(f"runs/*/*/{BROKEN}.ndjson"))
        raw.write_text("".join(ln for ln in raw.read_text().splitlines(keepends=True) if ln.startswith('{"')))
        again = dg.execute_job(
            dg.reconstructable(fanout_job),
            instance,
            reexecution_options=dg.ReexecutionOptions.from_failure(first.run_id, instance),
            tags={"dagster/partition": PARTITION},
        )
        assert again.success
        ran = {e.step_key for e in again.all_events if e.event_type_value == "STEP_SUCCESS"}
        assert ran == {f"agg_and_hits.ingest_system[{key}]", "agg_and_hits.ingest_gather"}, ran
        hits = pl.read_parquet(d / "staging" / "hits" / f"{PARTITION}.parquet")
        assert BROKEN in set(hits["system"].to_list()) and hits["system"].n_unique() >= 9


# ---------------------------------------------------------------------------------------------
# The pool, one system at a time
# ---------------------------------------------------------------------------------------------
def _naive_pool(hits: pl.DataFrame, depth: int) -> pl.DataFrame:
    keys = ["qid", "repo", "path", "start_line", "end_line"]
    return (
        hits.filter(pl.col("in_sla") & (pl.col("rank") <= depth))
        .group_by(keys)
        .agg(pl.col("system").unique().sort().alias("systems"), pl.col("rank").min().alias("best_rank"))
        .sort(keys)
    )


@pytest.mark.parametrize("n_systems", [1, 3, 70])  # 70: more systems than one 64-bit word
def test_the_pool_built_per_system_is_the_union_over_systems(tmp_path, n_systems):
    import numpy as np

    rng = np.random.default_rng(n_systems)
    n = 4000
    hits = pl.DataFrame(
        {
            "system": [f"s{int(i):02d}.v" for i in rng.integers(0, n_systems, n)],
            "qid": [f"q{int(i)}" for i in rng.integers(0, 30, n)],
            "repo": [f"r{int(i)}" for i in rng.integers(0, 3, n)],
            "path": [f"p{int(i)}.py" for i in rng.integers(0, 20, n)],
            "start_line": rng.integers(1, 5, n).astype(np.int32),
            "end_line": rng.integers(5, 9, n).astype(np.int32),
            "rank": rng.integers(1, 80, n).astype(np.int32),
            "in_sla": rng.random(n) < 0.8,
        }
    )
    p = tmp_path / "hits.parquet"
    hits.write_parquet(p)
    from lens_core.judge.judging import build_pool

    got = build_pool(pl.scan_parquet(p), depth=50)
    assert got.equals(_naive_pool(hits, 50))
    assert build_pool(hits, depth=50).equals(got)
    empty = build_pool(hits.filter(pl.lit(False)), depth=50)
    assert empty.height == 0 and empty.columns == got.columns


def test_two_systems_whose_names_sanitise_alike_keep_their_own_parts(tmp_path, monkeypatch):
    """`a.b` and `a_b` share a sanitised name: the plan's unique keys name their parts, so one
    system's ingested part never overwrites the other's."""
    from lens_assets.collection import ingest_gather, ingest_plan, ingest_system
    from lens_core.collect.rawruns import write_raw_run
    from lens_core.common.settings import load_config
    from lens_core.common.systems import baseline
    from lens_core.sim.simulator import Simulator

    monkeypatch.setenv("LENS_DATA_DIR", str(tmp_path))
    cfg = load_config()
    sim = Simulator(cfg.sim.model_copy(update={"queries_per_suite": 3}), seed=5)
    rows = []
    for name in ("a.b", "a_b"):
        recs = [dict(r, system=name) for r in sim.run(baseline(cfg), "w1", sim.queries, 150.0, 10, 1.7e12)]
        info = write_raw_run(tmp_path / "runs" / f"{name}.ndjson", recs)
        rows.append({"system": name, "path": f"runs/{name}.ndjson", "sha256": info["sha256"]})
    manifest = pl.DataFrame(rows)
    ctx = dg.build_op_context()
    items = [o.value for o in ingest_plan(ctx, manifest)]
    assert len({i["key"] for i in items}) == 2
    parts = [ingest_system(ctx, i) for i in items]
    assert len({p["hits"] for p in parts}) == 2
    out = {}
    for o in ingest_gather(ctx, manifest, parts):  # read each output as the IO manager would, when yielded
        out[o.output_name] = pl.read_parquet(o.value.path) if o.output_name == "hits" else o.value
    hits = out["hits"]
    assert sorted(set(hits["system"].to_list())) == ["a.b", "a_b"]
    assert out["agg"].group_by("system").len().sort("system")["len"].to_list() == [9, 9]
