"""Ingestion and the schema guard: every drift stops ingestion with file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

import lens_core.ingest.ndjson as ingest_mod
from lens_core.collect.rawruns import encode_record, write_raw_run
from lens_core.common.contracts import AGG_SCHEMA, HITS_SCHEMA
from lens_core.common.settings import load_config
from lens_core.common.systems import baseline
from lens_core.common.tables import SchemaError, write_parquet
from lens_core.ingest.ndjson import ingest
from lens_core.sim.simulator import Simulator


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
    rec["shards"] = [
        {
            "shard": 0,
            "probe_id": "a",
            "issued_ts": rec["req_ts"],
            "first_byte_ts": None,
            "done_ts": rec["req_ts"] + 10,
            "cancel_ts": None,
            "status": "ok",
        },
        {
            "shard": 1,
            "probe_id": "b",
            "issued_ts": rec["req_ts"],
            "first_byte_ts": None,
            "done_ts": rec["req_ts"] + 140,
            "cancel_ts": None,
            "status": "ok",
        },
        {
            "shard": 2,
            "probe_id": "c",
            "issued_ts": rec["req_ts"],
            "first_byte_ts": None,
            "done_ts": rec["req_ts"] + 400,
            "cancel_ts": None,
            "status": "timeout",
        },
    ]
    rec["hits"] = rec["hits"][:2]
    rec["hits"][0]["shard"], rec["hits"][1]["shard"] = 0, 1
    rec["lat_ms"] = 145.0
    late = json.loads(json.dumps(rec))
    late["qid"], late["lat_ms"] = "late", 160.0
    p = _write_lines(
        tmp_path / "x.ndjson", [json.dumps(rec), json.dumps(late), json.dumps({"type": "done", "records": 2})]
    )
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


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing_field", r"x\.ndjson:2: field 'lat_ms': missing"),
        ("wrong_type", r"x\.ndjson:3: field 'sla_ms': expected int or float, got str"),
        ("not_json", r"x\.ndjson:2: not JSON"),
        ("no_done", r"x\.ndjson:\d+: stream ended without a done line"),
        ("hit_field", r"x\.ndjson:1: field 'hits\[0\]\.path': missing"),
        ("bad_why", r"x\.ndjson:1: field 'hits\[\]\.why': unknown reason 'magic'"),
        ("count", r"done line declares 99 records"),
        ("blank_line", r"x\.ndjson:2: empty line"),
        ("space_line", r"x\.ndjson:3: empty line"),
    ],
)
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
    from lens_assets.collection import STEP_IO, agg_and_hits
    from resources.io_manager import ParquetIOManager, StepHandoverIOManager, staging_table_path

    good = write_raw_run(data_dir / "runs" / "good.ndjson", records)
    manifest = pl.DataFrame(
        {"system": ["s"], "path": ["runs/good.ndjson"], "sha256": [good["sha256"]], "records": [len(records)]}
    )

    @dg.asset(name="raw_runs", partitions_def=agg_and_hits.partitions_def)
    def raw_runs_stub():
        return manifest

    res = dg.materialize(
        [raw_runs_stub, agg_and_hits],
        partition_key="2026-11-15",
        resources={"io_manager": ParquetIOManager(), STEP_IO: StepHandoverIOManager()},
    )
    assert res.success
    agg_path = Path(staging_table_path("agg", "2026-11-15").path)
    before = agg_path.read_bytes()
    lines = _good_lines(records)[:-1]  # truncated: no done line
    _write_lines(data_dir / "runs" / "good.ndjson", lines)
    res = dg.materialize(
        [raw_runs_stub, agg_and_hits],
        partition_key="2026-11-15",
        resources={"io_manager": ParquetIOManager(), STEP_IO: StepHandoverIOManager()},
        raise_on_error=False,
    )
    assert not res.success

    def chain(err):
        while err is not None:
            yield err.message
            err = err.cause

    msg = "".join(m for e in res.all_events if e.is_step_failure for m in chain(e.event_specific_data.error))
    assert "good.ndjson" in msg and "done line" in msg
    assert agg_path.read_bytes() == before


# ---------------------------------------------------------------------------------------------
# The canonical fast path (RE2 certifies the layout and JSON types, DuckDB parses): it must
# give the exact path's tables, and never accept what the exact path refuses. DuckDB's JSON
# reader alone is lax (it turns "150" into 150.0, 1.5 or true into an integer, a number into a
# string, and accepts trailing commas), so every such case is written here in the canonical
# layout, where the fast path does run, and must still be refused with file, line and field.
# ---------------------------------------------------------------------------------------------
def _compact(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _canonical_lines(records) -> list[str]:
    return [encode_record(r) for r in records] + [_compact({"type": "done", "records": len(records)})]


class _Taken(list):
    tier: str


def _exact_only(monkeypatch) -> None:
    """Both fast tiers off: every file takes the exact path."""
    monkeypatch.setattr(ingest_mod, "_canonscan", None)
    monkeypatch.setattr(ingest_mod, "_fast_scan", lambda path, fd: None)


@pytest.fixture(params=["canon", "duckdb"])
def paths_taken(request, monkeypatch):
    """Runs the test once per fast tier, the other one switched off: "canon" (the C scanner,
    `_CanonFile`) and "duckdb"
    (RE2 certification + DuckDB, `_FastFile`). Each enters a file whose first line it accepts
    and declines the file at any later line it does not. Records ("fast"|"exact", file name) for every file that entered the fast
    tier or reached the exact path; `.tier` names the tier."""
    taken = _Taken()
    taken.tier = request.param
    if request.param == "canon":
        if ingest_mod._canonscan is None:
            pytest.skip("the C scanner lens_core.ingest._canonscan is not built (no C compiler at install)")
        monkeypatch.setattr(ingest_mod, "_fast_scan", lambda path, fd: None)
        fast_cls = ingest_mod._CanonFile
    else:
        monkeypatch.setattr(ingest_mod, "_canonscan", None)
        fast_cls = ingest_mod._FastFile
    real_fast, real_exact = fast_cls.tables, ingest_mod._parse_exact

    def fast(self, *a, **k):
        taken.append(("fast", Path(self.path).name))
        return real_fast(self, *a, **k)

    def exact(path, *a, **k):
        taken.append(("exact", Path(path).name))
        return real_exact(path, *a, **k)

    monkeypatch.setattr(fast_cls, "tables", fast)
    monkeypatch.setattr(ingest_mod, "_parse_exact", exact)
    return taken


def _varied(records) -> list[dict]:
    """Records that exercise the derived columns: a failed query (error set, lat_ms null), no
    hits, a hit without shard, escapes and non-ASCII in strings, an int where a float is
    expected, hits listed out of rank order."""
    recs = json.loads(json.dumps(records[:6]))
    recs[0]["error"], recs[0]["lat_ms"] = "timeout: shard 3", None
    recs[1]["hits"] = []
    recs[2]["hits"][0]["shard"] = None
    recs[2]["hits"][1]["path"] = 'src/a "quoted"\\path\u00e9\n\u0000.py'
    recs[2]["qid"] = recs[2]["qid"] + "/\u2028"
    recs[3]["sla_ms"] = 150
    recs[4]["hits"][0]["rank"], recs[4]["hits"][1]["rank"] = 2, 1
    return recs


def test_fast_path_gives_the_exact_paths_tables(tmp_path, records, monkeypatch, paths_taken):
    recs = _varied(records)
    info = write_raw_run(tmp_path / "fast.ndjson", recs)
    agg, hits = ingest([info["path"]])
    assert paths_taken == [("fast", "fast.ndjson")]  # certified: never reaches the exact path
    _exact_only(monkeypatch)
    agg_x, hits_x = ingest([info["path"]])
    assert paths_taken[1:] == [("exact", "fast.ndjson")]
    assert agg.equals(agg_x) and hits.equals(hits_x)
    h = pl.from_arrow(hits)
    assert h.filter(pl.col("qid") == recs[4]["qid"])["rank"].to_list()[:2] == [1, 2]
    assert recs[2]["hits"][1]["path"] in h["path"].to_list()
    assert pl.from_arrow(agg)["error"][0] == "timeout: shard 3"


def test_other_layouts_take_the_exact_path(tmp_path, records, paths_taken):
    p = _write_lines(tmp_path / "spaced.ndjson", _good_lines(records[:3]))  # json.dumps: ", " and ": "
    agg, _ = ingest([p])
    assert agg.num_rows == 3 and paths_taken == [("exact", "spaced.ndjson")]


def _set(path: str, value):
    """A mutation setting a (dotted, [index]) field of a record."""

    def mutate(obj):
        keys = path.replace("[", ".").replace("]", "").split(".")
        for k in keys[:-1]:
            obj = obj[int(k)] if k.isdigit() else obj[k]
        obj[keys[-1]] = value

    return mutate


def _drop(path: str):
    def mutate(obj):
        keys = path.split(".")
        for k in keys[:-1]:
            obj = obj[k]
        del obj[keys[-1]]

    return mutate


LAX_CASES = [
    ("sla_str", _set("sla_ms", "150"), r"x\.ndjson:2: field 'sla_ms': expected int or float, got str"),
    ("rank_float", _set("hits[0].rank", 1.5), r"x\.ndjson:2: field 'hits\[0\]\.rank': expected int, got float"),
    ("rank_bool", _set("hits[0].rank", True), r"x\.ndjson:2: field 'hits\[0\]\.rank': expected int, got bool"),
    (
        "rank_integral_float",
        _set("hits[0].rank", 2.0),
        r"x\.ndjson:2: field 'hits\[0\]\.rank': expected int, got float",
    ),
    ("rank_str", _set("hits[0].rank", "1"), r"x\.ndjson:2: field 'hits\[0\]\.rank': expected int, got str"),
    ("path_number", _set("hits[1].path", 7), r"x\.ndjson:2: field 'hits\[1\]\.path': expected str, got int"),
    ("qid_number", _set("qid", 7), r"x\.ndjson:2: field 'qid': expected str, got int"),
    ("repo_null", _set("hits[0].repo", None), r"x\.ndjson:2: field 'hits\[0\]\.repo': expected str, got NoneType"),
    ("start_line_null", _set("hits[2].start_line", None), r"x\.ndjson:2: field 'hits\[2\]\.start_line': expected int"),
    (
        "score_str",
        _set("hits[0].score", "9.5"),
        r"x\.ndjson:2: field 'hits\[0\]\.score': expected int or float, got str",
    ),
    ("shard_str", _set("hits[0].shard", "3"), r"x\.ndjson:2: field 'hits\[0\]\.shard': expected int or null, got str"),
    ("why_number", _set("hits[0].why", [1]), r"x\.ndjson:2: field 'hits\[0\]\.why': unknown reason"),
    ("lat_ms_missing", _drop("lat_ms"), r"x\.ndjson:2: field 'lat_ms': missing"),
    ("error_missing", _drop("error"), r"x\.ndjson:2: field 'error': missing"),
    ("probes_float", _set("cost.probes", 1.0), r"x\.ndjson:2: field 'cost\.probes': expected int, got float"),
    ("cpu_ms_missing", _drop("cost.cpu_ms"), r"x\.ndjson:2: field 'cost\.cpu_ms': missing"),
    ("status_unknown", _set("shards[0].status", "weird"), r"x\.ndjson:2: field 'shards\[\]\.status': 'weird' not in"),
    ("status_number", _set("shards[0].status", 1), r"x\.ndjson:2: field 'shards\[0\]\.status': expected str, got int"),
    (
        "issued_ts_bool",
        _set("shards[0].issued_ts", False),
        r"x\.ndjson:2: field 'shards\[0\]\.issued_ts': expected int or float, got bool",
    ),
]


@pytest.mark.parametrize("case, mutate, match", LAX_CASES)
def test_fast_path_refuses_what_duckdb_would_coerce(tmp_path, records, paths_taken, case, mutate, match):
    objs = [json.loads(encode_record(r)) for r in records[:4]]
    mutate(objs[1])
    lines = [_compact(o) for o in objs] + [_compact({"type": "done", "records": len(objs)})]
    p = _write_lines(tmp_path / "x.ndjson", lines)
    with pytest.raises(SchemaError, match=match):
        ingest([p])
    # the fast path ran (the first line is canonical), declined, and the exact path named it
    assert paths_taken == [("fast", "x.ndjson"), ("exact", "x.ndjson")]


@pytest.mark.parametrize(
    "case, match",
    [
        ("trailing_comma_list", r"x\.ndjson:2: not JSON"),
        ("trailing_comma_object", r"x\.ndjson:2: not JSON"),
        ("blank_line", r"x\.ndjson:2: empty line"),
        ("blank_before_done", r"x\.ndjson:5: empty line"),
        ("count", r"done line declares 99 records, file has 4"),
        ("first_line", r"x\.ndjson:1: field 'hits\[0\]\.rank': expected int, got float"),
        ("last_line", r"x\.ndjson:4: field 'qid': expected str, got int"),
    ],
)
def test_fast_path_refuses_bad_lines(tmp_path, records, paths_taken, case, match):
    lines = _canonical_lines(records[:4])
    if case == "trailing_comma_list":  # DuckDB's JSON parser accepts trailing commas
        lines[1] = lines[1].replace('],"shards":', ',],"shards":', 1)
    elif case == "trailing_comma_object":
        lines[1] = lines[1][:-1] + ",}"
    elif case == "blank_line":
        lines.insert(1, "")
    elif case == "blank_before_done":
        lines.insert(4, "")
    elif case == "count":
        lines[-1] = _compact({"type": "done", "records": 99})
    elif case == "first_line":
        obj = json.loads(lines[0])
        obj["hits"][0]["rank"] = 1.5
        lines[0] = _compact(obj)
    elif case == "last_line":
        obj = json.loads(lines[3])
        obj["qid"] = 12
        lines[3] = _compact(obj)
    p = _write_lines(tmp_path / "x.ndjson", lines)
    with pytest.raises(SchemaError, match=match):
        ingest([p])
    # a non-canonical first line skips the fast path; otherwise it runs and declines
    assert paths_taken == ([] if case == "first_line" else [("fast", "x.ndjson")]) + [("exact", "x.ndjson")]


@pytest.mark.parametrize("bad", [b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"], ids=["invalid", "truncated", "surrogate"])
def test_strings_that_are_not_utf8_are_refused_with_the_line(tmp_path, records, paths_taken, bad):
    """Invalid UTF-8 (or an encoded surrogate) inside a string of a canonical line: RE2 matches
    bytes and neither DuckDB's nor pyarrow's JSON reader checks a string's encoding, so without
    a check the bytes would reach Arrow strings (and crash polars on read). Every path refuses
    the file, and the error names its line."""
    lines = [line.encode() for line in _canonical_lines(records[:3])]
    i = lines[1].index(b'"path":"') + len(b'"path":"')
    lines[1] = lines[1][:i] + bad + lines[1][i:]
    p = tmp_path / "x.ndjson"
    p.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(SchemaError, match=r"x\.ndjson:2: not UTF-8 \(byte \d+ of the line: "):
        ingest([p])
    assert paths_taken == [("fast", "x.ndjson"), ("exact", "x.ndjson")]


def test_certifiers_share_ranges_and_grow_for_long_lines(tmp_path, records, monkeypatch, paths_taken):
    """Certification in many small ranges taken by the certifier threads from one queue, each
    record line longer than a certifier's read buffer (which grows to hold it): the fast path
    still certifies the file and gives the exact path's tables; a bad line in a later range
    makes it decline, and the exact path names the line."""
    monkeypatch.setattr(ingest_mod, "_CHUNK", 256)
    monkeypatch.setattr(ingest_mod, "_PIECE", 1024)
    lines = _canonical_lines(records[:12])
    assert min(len(line) for line in lines[:-1]) > 256
    p = _write_lines(tmp_path / "long.ndjson", lines)
    agg, hits = ingest([p])
    assert paths_taken == [("fast", "long.ndjson")]  # certified: never reaches the exact path
    tiers = ingest_mod._canonscan, ingest_mod._fast_scan
    _exact_only(monkeypatch)
    agg_x, hits_x = ingest([p])
    assert agg.equals(agg_x) and hits.equals(hits_x)
    monkeypatch.setattr(ingest_mod, "_canonscan", tiers[0])
    monkeypatch.setattr(ingest_mod, "_fast_scan", tiers[1])
    obj = json.loads(lines[10])
    obj["sla_ms"] = "150"
    lines[10] = _compact(obj)
    with pytest.raises(SchemaError, match=r"x\.ndjson:11: field 'sla_ms': expected int or float, got str"):
        ingest([_write_lines(tmp_path / "x.ndjson", lines)])
    assert paths_taken[2:] == [("fast", "x.ndjson"), ("exact", "x.ndjson")]


def test_written_tables_read_back_as_the_contract(tmp_path, records):
    import pyarrow.parquet as pq

    info = write_raw_run(tmp_path / "s.ndjson", _varied(records))
    agg, hits = ingest([info["path"]])
    for name, table, schema in (("agg", agg, AGG_SCHEMA), ("hits", hits, HITS_SCHEMA)):
        out = write_parquet(table, tmp_path / f"{name}.parquet", schema=schema)
        back = pq.read_table(out["path"])
        assert back.schema.equals(schema), name  # plain strings, timestamp[ms, tz=UTC]
        assert back.equals(table), name


@pytest.mark.parametrize("case, mutate, match", LAX_CASES)
def test_certifier_itself_refuses_each_lax_line(records, case, mutate, match):
    """The guard is the regex, not an accident of DuckDB's reader: the canonical line passes,
    the same line with the drift does not."""
    good = encode_record(records[0])
    obj = json.loads(good)
    mutate(obj)
    for line, ok in ((good, True), (_compact(obj), False)):
        assert ingest_mod._certified(memoryview((line + "\n").encode())) is ok, line[:120]


def test_in_sla_with_shard_ids_far_apart(tmp_path, records):
    """Shard ids spanning a range too wide for the dense (record, shard) table take the join:
    same in_sla as with small ids."""
    recs = _varied(records)
    wide = json.loads(json.dumps(recs))
    spread = lambda s: s * 1_000_000_007 % 2_147_483_647  # noqa: E731 - distinct for small ids, int32
    for r in wide:
        for s in r["shards"]:
            s["shard"] = spread(s["shard"])
        for h in r["hits"]:
            h["shard"] = None if h["shard"] is None else spread(h["shard"])
    _, hits = ingest([write_raw_run(tmp_path / "small.ndjson", recs)["path"]])
    _, hits_w = ingest([write_raw_run(tmp_path / "wide.ndjson", wide)["path"]])
    assert hits_w.column("in_sla").to_pylist() == hits.column("in_sla").to_pylist()
    assert any(hits.column("in_sla").to_pylist()) and not all(hits.column("in_sla").to_pylist())


def test_fast_path_does_not_import_pandas(tmp_path, records):
    """pyarrow's to_numpy/pa.array import pandas on first use (about half a second of a fresh
    process); the fast path and the writes convert through polars and never need it."""
    import subprocess
    import sys

    pytest.importorskip("pandas")  # without pandas installed this could not fail
    info = write_raw_run(tmp_path / "s.ndjson", _varied(records))
    code = (
        "import sys; from lens_core.ingest.ndjson import ingest; from lens_core.common.tables import write_parquet; "
        "from lens_core.common.contracts import AGG_SCHEMA, HITS_SCHEMA; "
        f"a, h = ingest([{str(info['path'])!r}]); "
        f"write_parquet(a, {str(tmp_path / 'a.parquet')!r}, schema=AGG_SCHEMA); "
        f"write_parquet(h, {str(tmp_path / 'h.parquet')!r}, schema=HITS_SCHEMA); "
        "print('pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_done_line_count_must_be_an_integer_not_a_bool(tmp_path, records):
    """`true` is not a record count (json gives a bool, which Python counts as 1)."""
    lines = _good_lines(records[:1])
    lines[-1] = json.dumps({"type": "done", "records": True})
    p = _write_lines(tmp_path / "x.ndjson", lines)
    with pytest.raises(SchemaError, match=r"x\.ndjson:2: field 'records': done line lacks an integer record count"):
        ingest([p])


# ---------------------------------------------------------------------------------------------
# ingest_to_parquet: hits encoded into a temporary Parquet file while the raw file is still
# being verified. Same tables as ingest + write_parquet, atomic, nothing left on any error.
# ---------------------------------------------------------------------------------------------
def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_ingest_to_parquet_single_file_writes_write_parquets_bytes(tmp_path, records):
    import pyarrow.parquet as pq

    info = write_raw_run(tmp_path / "a.ndjson", _varied(records))
    agg, hits = ingest([info["path"]])
    ref = write_parquet(hits, tmp_path / "ref" / "hits.parquet", schema=HITS_SCHEMA)
    out = tmp_path / "out"
    agg2, hf = ingest_mod.ingest_to_parquet([info["path"]], out / "agg.parquet", out / "hits.parquet")
    assert agg2.equals(agg)
    assert hf.path == out / "hits.parquet" and hf.rows == hits.num_rows
    assert hf.path.read_bytes() == Path(ref["path"]).read_bytes() and hf.sha256 == ref["sha256"]
    assert pq.read_table(out / "agg.parquet").equals(agg)
    assert _files(out) == ["agg.parquet", "hits.parquet"]  # no temporary file left behind


def test_ingest_to_parquet_mixed_paths_give_ingests_rows(tmp_path, records, paths_taken):
    import pyarrow.parquet as pq

    fast = write_raw_run(tmp_path / "fast.ndjson", records[:6])["path"]
    exact = _write_lines(tmp_path / "spaced.ndjson", _good_lines(records[6:10]))  # another writer's layout
    agg, hits = ingest([fast, exact])
    del paths_taken[:]
    agg2, hf = ingest_mod.ingest_to_parquet([fast, exact], None, tmp_path / "out" / "hits.parquet")
    # the canonical file was certified on the fast path and never reached the exact path
    assert paths_taken == [("fast", "fast.ndjson"), ("exact", "spaced.ndjson")]
    assert agg2.equals(agg)
    back = pq.read_table(hf.path)
    assert back.schema.equals(HITS_SCHEMA) and back.equals(hits) and hf.rows == hits.num_rows
    assert _files(tmp_path / "out") == ["hits.parquet"]


def test_ingest_to_parquet_falls_back_when_verification_fails_after_writing(
    tmp_path, records, monkeypatch, paths_taken
):
    """The verification's verdict (the file's hash, and for DuckDB's tier the certifiers')
    arrives after the hits were handed to the writer: a refusal then aborts the temporary file
    and the exact path redoes the whole set."""
    info = write_raw_run(tmp_path / "a.ndjson", records[:5])
    agg, hits = ingest([info["path"]])
    del paths_taken[:]
    written = []
    real_write = ingest_mod.pq.ParquetWriter.write_table

    def spy(self, table, *a, **k):
        written.append(table.num_rows)
        return real_write(self, table, *a, **k)

    monkeypatch.setattr(ingest_mod.pq.ParquetWriter, "write_table", spy)
    monkeypatch.setattr(ingest_mod._StreamHasher, "run", lambda self: None)  # no digest: not verified
    out = tmp_path / "out"
    agg2, hf = ingest_mod.ingest_to_parquet([info["path"]], None, out / "hits.parquet")
    assert written and written[0] == hits.num_rows  # the fast path did write before the verdict
    # the fast tier wrote, then refused; `ingest` redoes the set: the fast tier refuses again, the exact path reads it
    assert paths_taken == [("fast", "a.ndjson"), ("fast", "a.ndjson"), ("exact", "a.ndjson")]
    assert agg2.equals(agg) and hf.rows == hits.num_rows
    assert hf.sha256 == write_parquet(hits, tmp_path / "ref.parquet", schema=HITS_SCHEMA)["sha256"]
    assert _files(out) == ["hits.parquet"]


@pytest.mark.parametrize(
    "case, mutate, match",
    [c for c in LAX_CASES if c[0] in ("sla_str", "rank_float", "path_number", "lat_ms_missing", "status_unknown")],
)
def test_ingest_to_parquet_refuses_like_ingest_and_writes_nothing(tmp_path, records, case, mutate, match):
    objs = [json.loads(encode_record(r)) for r in records[:4]]
    mutate(objs[1])
    good = write_raw_run(tmp_path / "good.ndjson", records[4:8])["path"]
    p = _write_lines(tmp_path / "x.ndjson", [_compact(o) for o in objs] + [_compact({"type": "done", "records": 4})])
    out = tmp_path / "out"
    with pytest.raises(SchemaError, match=match):
        ingest_mod.ingest_to_parquet([good, p], out / "agg.parquet", out / "hits.parquet")
    assert _files(out) == []


def test_io_manager_adopts_a_written_parquet_file(tmp_path, records, monkeypatch):
    import os

    from upath import UPath

    from resources import io_manager

    src = tmp_path / "scratch" / "hits.parquet"
    _, hf = ingest_mod.ingest_to_parquet([write_raw_run(tmp_path / "a.ndjson", records[:3])["path"]], None, src)
    body = src.read_bytes()
    target = UPath(tmp_path / "staging" / "hits" / "2026-01-04.parquet")
    io_manager.adopt_parquet(hf, target)
    assert Path(target).read_bytes() == body and not src.exists()
    # another file system: os.replace refuses the move, the file is copied in beside the target
    _, hf2 = ingest_mod.ingest_to_parquet([write_raw_run(tmp_path / "b.ndjson", records[3:6])["path"]], None, src)
    body2 = src.read_bytes()
    assert body2 != body
    real_replace = os.replace

    def no_cross_device(a, b):
        if Path(a) == src:
            raise OSError(18, "Invalid cross-device link")
        return real_replace(a, b)

    monkeypatch.setattr(io_manager.os, "replace", no_cross_device)
    io_manager.adopt_parquet(hf2, target)
    assert Path(target).read_bytes() == body2 and not src.exists()
    assert _files(Path(target).parent) == ["2026-01-04.parquet"]
