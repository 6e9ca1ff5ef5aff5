"""Ingestion and the schema guard: every drift stops ingestion with file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from lens_core.contracts import AGG_SCHEMA, HITS_SCHEMA
from lens_core.ingest import ingest
from lens_core.rawruns import write_raw_run
from lens_core.settings import load_config
from lens_core.simulator import Simulator
from lens_core.systems import baseline
from lens_core.tables import SchemaError, write_parquet


@pytest.fixture(scope="module")
def records():
    cfg = load_config()
    sim = Simulator(cfg.sim.model_copy(update={"queries_per_suite": 5}), seed=3)
    return sim.run(baseline(cfg), "r1", sim.queries, 150.0, 20, 1.7e12)


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _good_lines(records) -> list[str]:
    return [json.dumps(r) for r in records] + [json.dumps({"type": "done", "records": len(records)})]


def test_ingest_good_file(tmp_path, records):
    info = write_raw_run(tmp_path / "s.ndjson", records)
    agg, hits = ingest([info["path"]])
    assert agg.schema.equals(AGG_SCHEMA) and hits.schema.equals(HITS_SCHEMA)
    assert agg.num_rows == len(records)
    assert hits.num_rows == sum(len(r["hits"]) for r in records)
    a = pl.from_arrow(agg)
    assert (a["attestation_sha256"] == info["sha256"]).all()
    assert a["within_sla"].to_list() == [r["lat_ms"] <= 150 for r in records]
    h = pl.from_arrow(hits)
    assert h.filter(pl.col("qid") == records[0]["qid"])["rank"].to_list() == list(range(1, len(records[0]["hits"]) + 1))


def test_in_sla_follows_shard_done_time(tmp_path, records):
    rec = json.loads(json.dumps(records[0]))
    rec["shards"] = [{"shard": 0, "probe_id": "a", "issued_ts": rec["req_ts"], "first_byte_ts": None,
                      "done_ts": rec["req_ts"] + 10, "cancel_ts": None, "status": "ok"},
                     {"shard": 1, "probe_id": "b", "issued_ts": rec["req_ts"], "first_byte_ts": None,
                      "done_ts": rec["req_ts"] + 140, "cancel_ts": None, "status": "ok"},
                     {"shard": 2, "probe_id": "c", "issued_ts": rec["req_ts"], "first_byte_ts": None,
                      "done_ts": rec["req_ts"] + 400, "cancel_ts": None, "status": "timeout"}]
    rec["hits"] = rec["hits"][:2]
    rec["hits"][0]["shard"], rec["hits"][1]["shard"] = 0, 1
    rec["lat_ms"] = 145.0
    late = json.loads(json.dumps(rec))
    late["qid"], late["lat_ms"] = "late", 160.0
    p = _write_lines(tmp_path / "x.ndjson", [json.dumps(rec), json.dumps(late), json.dumps({"type": "done", "records": 2})])
    _, hits = ingest([p])
    h = pl.from_arrow(hits)
    # on time: both shards answered within the SLA; late query: nothing counts as returned
    assert h.filter(pl.col("qid") != "late")["in_sla"].to_list() == [True, True]
    assert h.filter(pl.col("qid") == "late")["in_sla"].to_list() == [False, False]
    # a hit whose shard finished after the SLA is not in SLA even if the query is
    rec2 = json.loads(json.dumps(rec))
    rec2["shards"][1]["done_ts"] = rec["req_ts"] + 151
    p = _write_lines(tmp_path / "y.ndjson", [json.dumps(rec2), json.dumps({"type": "done", "records": 1})])
    _, hits = ingest([p])
    assert pl.from_arrow(hits)["in_sla"].to_list() == [True, False]


@pytest.mark.parametrize("case, match", [
    ("missing_field", r"x\.ndjson:2: field 'lat_ms': missing"),
    ("wrong_type", r"x\.ndjson:3: field 'sla_ms': expected int or float, got str"),
    ("not_json", r"x\.ndjson:2: not JSON"),
    ("no_done", r"x\.ndjson:\d+: stream ended without a done line"),
    ("hit_field", r"x\.ndjson:1: field 'hits\[0\]\.path': missing"),
    ("bad_why", r"x\.ndjson:1: field 'hits\[\]\.why': unknown reason 'magic'"),
    ("count", r"done line declares 99 records"),
    ("blank_line", r"x\.ndjson:2: empty line"),
    ("space_line", r"x\.ndjson:3: empty line"),
])
def test_schema_drift_names_file_line_field(tmp_path, records, case, match):
    lines = _good_lines(records[:4])
    objs = [json.loads(x) for x in lines[:-1]]
    if case == "missing_field":
        del objs[1]["lat_ms"]
    elif case == "wrong_type":
        objs[2]["sla_ms"] = "150"
    elif case == "hit_field":
        del objs[0]["hits"][0]["path"]
    elif case == "bad_why":
        objs[0]["hits"][0]["why"] = ["magic"]
    lines = [json.dumps(o) for o in objs] + [lines[-1]]
    if case == "not_json":
        lines[1] = lines[1][:-7]
    elif case == "no_done":
        lines = lines[:-1]
    elif case == "count":
        lines[-1] = json.dumps({"type": "done", "records": 99})
    elif case == "blank_line":
        lines.insert(1, "")
    elif case == "space_line":
        lines.insert(2, "   ")
    p = _write_lines(tmp_path / "x.ndjson", lines)
    with pytest.raises(SchemaError, match=match):
        ingest([p])


def test_guard_refuses_drifted_table_and_writes_nothing(tmp_path, records):
    info = write_raw_run(tmp_path / "s.ndjson", records)
    agg, _ = ingest([info["path"]])
    out = tmp_path / "agg.parquet"
    write_parquet(agg, out, schema=AGG_SCHEMA)
    before = out.read_bytes()
    with pytest.raises(SchemaError, match="required column\\(s\\) missing: lat_ms"):
        write_parquet(agg.drop(["lat_ms"]), out, schema=AGG_SCHEMA)
    bad = pl.from_arrow(agg).with_columns(pl.lit("slow").alias("lat_ms"))
    with pytest.raises(SchemaError, match="column 'lat_ms'"):
        write_parquet(bad, out, schema=AGG_SCHEMA)
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".agg")]


def test_failed_ingestion_leaves_staged_tables_untouched(data_dir, records):
    """Through Dagster: a bad raw run fails the step; the existing agg/hits Parquet stays."""
    from lens_assets.assets import agg_and_hits
    from resources.io_manager import ParquetIOManager, staging_table_path

    good = write_raw_run(data_dir / "runs" / "good.ndjson", records)
    manifest = pl.DataFrame({"system": ["s"], "path": ["runs/good.ndjson"], "sha256": [good["sha256"]], "records": [len(records)]})

    @dg.asset(name="raw_runs", partitions_def=agg_and_hits.partitions_def)
    def raw_runs_stub():
        return manifest

    res = dg.materialize([raw_runs_stub, agg_and_hits], partition_key="2026-11-15",
                         resources={"io_manager": ParquetIOManager()})
    assert res.success
    agg_path = Path(staging_table_path("agg", "2026-11-15").path)
    before = agg_path.read_bytes()
    lines = _good_lines(records)[:-1]  # truncated: no done line
    _write_lines(data_dir / "runs" / "good.ndjson", lines)
    res = dg.materialize([raw_runs_stub, agg_and_hits], partition_key="2026-11-15",
                         resources={"io_manager": ParquetIOManager()}, raise_on_error=False)
    assert not res.success
    def chain(err):
        while err is not None:
            yield err.message
            err = err.cause
    msg = "".join(m for e in res.all_events if e.is_step_failure for m in chain(e.event_specific_data.error))
    assert "good.ndjson" in msg and "done line" in msg
    assert agg_path.read_bytes() == before
