"""One validation contract for every entry point (issue 18, item 1).

Raw-run NDJSON (`lens-eval ingest`, through each of ingestion's three parsers: the C scanner,
RE2 + DuckDB, the exact path), TREC run/qrels files and Parquet hits/qrels/agg (`lens-eval
score`): every bad input below must be refused with exit code 2, exactly one line on stderr
naming `file:line` (text) or `file: row N column C` (Parquet), no traceback, nothing written.
A 2 GB sparse file is refused on every entry point with bounded memory and time.

Each case is recorded in `TALLY` (entry point, case, outcome); the module prints the tally at
its end ("validation tally: tried N, refused with file:line N, ...").
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

import lens_core.ingest.ndjson as ingest_mod
from lens_cli.main import main
from lens_core.collect.rawruns import encode_record
from lens_core.common.settings import load_config
from lens_core.common.systems import baseline
from lens_core.sim.simulator import Simulator
from tests.conftest import REPO

TALLY: list[dict] = []  # {"entry", "case", "outcome"}: refused | accepted | crashed | unclear


@pytest.fixture(scope="module", autouse=True)
def _print_tally(request):
    yield
    by = {}
    for t in TALLY:
        by[t["outcome"]] = by.get(t["outcome"], 0) + 1
    entries = sorted({t["entry"] for t in TALLY})
    line = (
        f"validation tally: tried {len(TALLY)}, refused with file:line {by.get('refused', 0)}, "
        f"accepted {by.get('accepted', 0)}, crashed {by.get('crashed', 0)}, unclear {by.get('unclear', 0)} "
        f"(entry points: {', '.join(entries)})"
    )
    if SPARSE_RESULTS:
        line += "; 2 GB sparse file: " + ", ".join(
            f"{e} {rss:.0f} MB {wall:.2f} s" for e, (rss, wall) in sorted(SPARSE_RESULTS.items())
        )
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # past pytest's output capture, at the module's end
            reporter.write_line("")
            reporter.write_line(line)
    else:  # pragma: no cover - run without those plugins
        print(line)


def _run(entry: str, case: str, argv: list[str], capsys, where: str, out: Path) -> list[str]:
    """Run `lens-eval argv` in-process; record the outcome; return stderr's lines. `where` is
    the location the one error line must name."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    except BaseException as e:  # a traceback: a bug
        TALLY.append({"entry": entry, "case": case, "outcome": "crashed"})
        raise AssertionError(f"{entry}/{case}: traceback instead of one line: {e!r}") from e
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    if rc == 0:
        outcome = "accepted"
    elif rc == 2 and len(err) == 1 and where in err[0] and not out.exists():
        outcome = "refused"
    else:
        outcome = "unclear"
    TALLY.append({"entry": entry, "case": case, "outcome": outcome})
    assert rc == 2, (rc, err)
    assert len(err) == 1 and err[0].startswith("lens-eval: error: "), err
    assert "Traceback" not in err[0]
    assert not out.exists(), f"{out} was written"
    return err


# ---------------------------------------------------------------------------------------------
# Raw-run NDJSON: every parser tier gives the same verdict
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def records():
    cfg = load_config()
    sim = Simulator(cfg.sim.model_copy(update={"queries_per_suite": 5}), seed=3)
    recs = sim.run(baseline(cfg), "r1", sim.queries, 150.0, 20, 1.7e12)
    return [r for r in recs if len(r["hits"]) >= 3 and r["shards"] and r["lat_ms"] is not None][:4]


def _compact(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)  # NaN/Infinity as JS tokens


def _set(path: str, value):
    """A mutation setting a dotted field (`hits.0.rank`) of a record."""

    def mutate(obj):
        keys = path.split(".")
        for k in keys[:-1]:
            obj = obj[int(k)] if k.isdigit() else obj[k]
        obj[keys[-1]] = value

    return mutate


def _inverted(obj):
    h = obj["hits"][0]
    h["start_line"], h["end_line"] = h["end_line"] + 5, h["end_line"]


def _dup_rank(obj):
    obj["hits"][1]["rank"] = obj["hits"][0]["rank"]


_BIG = 123456.789  # replaced by a raw token after encoding
# (case, mutation of record 2, field, message): the error is `x.ndjson:2: field '<field>': <message>`
NDJSON_CASES = [
    ("rank_0", _set("hits.0.rank", 0), "hits[0].rank", "rank 0 is not >= 1"),
    ("rank_negative", _set("hits.0.rank", -1), "hits[0].rank", "rank -1 is not >= 1"),
    ("rank_duplicate", _dup_rank, "hits[1].rank", "duplicate rank 1 for the same record"),
    ("rank_2^40", _set("hits.0.rank", 2**40), "hits[0].rank", "rank 1099511627776 does not fit in 32 bits"),
    ("rank_float", _set("hits.0.rank", 1.0), "hits[0].rank", "expected int, got float (1.0)"),
    ("start_line_0", _set("hits.0.start_line", 0), "hits[0].start_line", "start_line 0 is not >= 1"),
    ("start_line_negative", _set("hits.1.start_line", -5), "hits[1].start_line", "start_line -5 is not >= 1"),
    ("inverted_span", _inverted, "hits[0].end_line", "inverted span: start_line"),
    (
        "end_line_2^31",
        _set("hits.0.end_line", 2**31),
        "hits[0].end_line",
        "end_line 2147483648 does not fit in 32 bits",
    ),
    ("score_nan", _set("hits.0.score", math.nan), "hits[0].score", "score nan is not a finite number"),
    ("score_infinity", _set("hits.2.score", math.inf), "hits[2].score", "score inf is not a finite number"),
    ("score_1e400", _set("hits.0.score", _BIG), "hits[0].score", "score inf is not a finite number"),
    ("lat_ms_nan", _set("lat_ms", math.nan), "lat_ms", "lat_ms nan is not a finite number"),
    ("lat_ms_negative", _set("lat_ms", -3.5), "lat_ms", "lat_ms -3.5 is negative"),
    ("req_ts_-infinity", _set("req_ts", -math.inf), "req_ts", "req_ts -inf is not a finite number"),
    ("req_ts_absurd", _set("req_ts", 1e300), "req_ts", "req_ts 1e+300 is not epoch milliseconds in 1970..9999"),
    ("sla_ms_0", _set("sla_ms", 0.0), "sla_ms", "sla_ms 0.0 is not > 0"),
    ("cpu_ms_nan", _set("cost.cpu_ms", math.nan), "cost.cpu_ms", "cost.cpu_ms nan is not a finite number"),
    ("issued_ts_infinity", _set("shards.0.issued_ts", math.inf), "shards[].issued_ts", "issued_ts inf is not a finite"),
    ("qid_empty", _set("qid", ""), "qid", "qid is empty or null"),
    ("qid_blank", _set("qid", "  "), "qid", "qid is empty or null"),
    ("system_empty", _set("system", ""), "system", "system is empty or null"),
    ("run_id_empty", _set("run_id", ""), "run_id", "run_id is empty or null"),
    ("repo_empty", _set("hits.0.repo", ""), "hits[0].repo", "repo is empty or null"),
    ("path_blank", _set("hits.2.path", " \t"), "hits[2].path", "path is empty or null"),
    ("why_empty", _set("hits.1.why", []), "hits[].why", "is empty: a non-empty subset of"),
    ("why_unknown_not_alone", _set("hits.0.why", ["unknown", "lex"]), "hits[].why", "'unknown' must be alone"),
    ("why_unknown_reason", _set("hits.2.why", ["lex", "magic"]), "hits[].why", "unknown reason"),
]
TIERS = ["canon", "duckdb", "exact"]


@pytest.fixture(params=TIERS)
def tier(request, monkeypatch):
    """Ingestion with one parser tier (the others off): the C scanner, RE2 + DuckDB, or the
    exact path alone. A fast tier declines a bad file; the exact path then names the problem."""
    if request.param == "canon":
        if ingest_mod._canonscan is None:
            pytest.skip("the C scanner is not built")
        monkeypatch.setattr(ingest_mod, "_fast_scan", lambda path, fd: None)
    elif request.param == "duckdb":
        monkeypatch.setattr(ingest_mod, "_canonscan", None)
    else:
        monkeypatch.setattr(ingest_mod, "_canonscan", None)
        monkeypatch.setattr(ingest_mod, "_fast_scan", lambda path, fd: None)
    return request.param


def _write_ndjson(path: Path, objs: list[dict], raw: dict[int, bytes] | None = None) -> Path:
    lines = [_compact(o).encode() for o in objs] + [_compact({"type": "done", "records": len(objs)}).encode()]
    for i, b in (raw or {}).items():
        lines[i] = b
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _ingest_refused(tmp_path, capsys, case: str, tier: str, path: Path, where: str) -> str:
    out = tmp_path / "out"
    err = _run(f"ingest[{tier}]", case, ["ingest", str(path), "--out", str(out)], capsys, where, out)
    return err[0]


@pytest.mark.parametrize("case, mutate, field, message", NDJSON_CASES, ids=[c[0] for c in NDJSON_CASES])
def test_ndjson_bad_value_is_refused_with_its_line_on_every_tier(
    tmp_path, capsys, records, tier, case, mutate, field, message
):
    objs = [json.loads(encode_record(r)) for r in records]
    mutate(objs[1])
    p = tmp_path / "x.ndjson"
    _write_ndjson(p, objs)
    if case == "score_1e400":
        p.write_bytes(p.read_bytes().replace(repr(_BIG).encode(), b"1e400"))
    where = f"{p}:2: field '{field}': "
    err = _ingest_refused(tmp_path, capsys, case, tier, p, where)
    assert err.startswith(f"lens-eval: error: {where}{message}"), err


def test_an_unknown_why_is_accepted_on_every_tier_and_by_the_data_test(tmp_path, records, tier):
    """The open-source Lens JSON shape reports no reasons: its hits carry why = ["unknown"]
    (wire.check_oss_result), which every tier ingests as a hit with no reason flag. The data test
    dbt_hits_why_non_empty takes a system whose hits all have none, and fails one that mixes
    flagged and flagless hits (a flagless hit where the system reports reasons)."""
    from dbt_like_checks import run_tests  # lazy: DuckDB, for this test only

    objs = [json.loads(encode_record(r)) for r in records]
    for o in objs:
        for h in o["hits"]:
            h["why"] = ["unknown"]
    p = _write_ndjson(tmp_path / "x.ndjson", objs)
    agg, hits = ingest_mod.ingest([p])
    h = pl.from_arrow(hits)
    n = sum(len(o["hits"]) for o in objs)
    flags_off = h.height == n and not h.select(pl.any_horizontal("why_lex", "why_struct", "why_sem").any()).item()
    a = pl.from_arrow(agg)
    mix_zero = a.select(pl.sum_horizontal("why_mix_lex", "why_mix_struct", "why_mix_sem").max()).item() == 0
    hits_path = tmp_path / "hits.parquet"
    h.write_parquet(hits_path)
    ok_unknown = run_tests({"hits": hits_path}, tables=["hits"], names=["why_non_empty"])[0].passed
    # a system that reports reasons, with one flagless hit: the data test fails and names it
    mixed = pl.concat(
        [
            h,
            h.head(2).with_columns(pl.lit("reasons_sys").alias("system"), pl.lit(True).alias("why_lex")),
            h.slice(2, 1).with_columns(pl.lit("reasons_sys").alias("system")),
        ]
    )
    mixed.write_parquet(hits_path)
    bad = run_tests({"hits": hits_path}, tables=["hits"], names=["why_non_empty"])[0]
    named = not bad.passed and any(r.get("system") == "reasons_sys" for r in bad.sample)
    assert flags_off and mix_zero and ok_unknown and named, (flags_off, mix_zero, ok_unknown, bad)


def _nul_line(objs):
    return {1: b"\x00" * 300}


NDJSON_FILE_CASES = [
    ("empty_file", lambda objs: b"", 1, "empty file: stream ended without a done line"),
    ("only_newlines", lambda objs: b"\n\n\n", 1, "empty file: stream ended without a done line"),
    ("no_done_line", None, 4, "stream ended without a done line (truncated run file)"),
    ("nul_line", _nul_line, 2, "not JSON: control byte 0x00 at byte 1 of the line"),
    ("invalid_utf8", "utf8", 2, "not UTF-8 (byte"),
    ("binary_line", lambda objs: {2: bytes(range(1, 200))}, 3, "not JSON: control byte 0x01 at byte 1 of the line"),
]


@pytest.mark.parametrize("case, make, line, message", NDJSON_FILE_CASES, ids=[c[0] for c in NDJSON_FILE_CASES])
def test_ndjson_bad_file_is_refused_with_its_line_on_every_tier(
    tmp_path, capsys, records, tier, case, make, line, message
):
    objs = [json.loads(encode_record(r)) for r in records]
    p = tmp_path / "x.ndjson"
    if case == "no_done_line":
        p.write_bytes(b"\n".join(_compact(o).encode() for o in objs) + b"\n")
    elif case == "invalid_utf8":
        objs[1]["hits"][0]["path"] = "@@@"
        _write_ndjson(p, objs)
        p.write_bytes(p.read_bytes().replace(b"@@@", b"a\xff\xfeb"))
    else:
        made = make(objs)
        if isinstance(made, bytes):
            p.write_bytes(made)
        else:
            _write_ndjson(p, objs, made)
    where = f"{p}:{line}: "
    err = _ingest_refused(tmp_path, capsys, case, tier, p, where)
    assert err.startswith(f"lens-eval: error: {where}{message}"), err


def test_good_ndjson_still_ingests_on_every_tier(tmp_path, capsys, records, tier):
    objs = [json.loads(encode_record(r)) for r in records]
    p = _write_ndjson(tmp_path / "ok.ndjson", objs)
    assert main(["ingest", str(p), "--out", str(tmp_path / "out")]) == 0
    assert sorted(x.name for x in (tmp_path / "out").iterdir()) == ["agg.parquet", "hits.parquet"]
    assert pl.read_parquet(tmp_path / "out" / "hits.parquet").height == sum(len(o["hits"]) for o in objs)


# ---------------------------------------------------------------------------------------------
# `lens-eval score` on TREC files
# ---------------------------------------------------------------------------------------------
_RUN = "q1 Q0 r:a.py:1-10 1 9.0 sysA\nq1 Q0 r:b.py:5-9 2 8.0 sysA\nq2 Q0 r:c.py:1-3 1 5.0 sysA\n"
_QRELS = "q1 0 r:b.py:5-9 2\nq2 0 r:d.py:1-3 1\n"


def _line2(text: str):
    return lambda: _RUN.splitlines()[0] + "\n" + text + "\n" + _RUN.splitlines()[2] + "\n"


# (case, run file body, line, message)
TREC_RUN_CASES = [
    ("rank_0", _line2("q1 Q0 r:b.py:5-9 0 8.0 sysA"), 2, "rank 0 is not >= 1"),
    ("rank_negative", _line2("q1 Q0 r:b.py:5-9 -1 8.0 sysA"), 2, "rank -1 is not >= 1"),
    ("rank_-11", _line2("q1 Q0 r:b.py:5-9 -11 8.0 sysA"), 2, "rank -11 is not >= 1"),
    ("rank_duplicate", _line2("q1 Q0 r:b.py:5-9 1 8.0 sysA"), 2, "duplicate rank 1 for the same (system, qid)"),
    ("rank_float", _line2("q1 Q0 r:b.py:5-9 2.0 8.0 sysA"), 2, "rank '2.0' is not an integer"),
    ("score_nan", _line2("q1 Q0 r:b.py:5-9 2 nan sysA"), 2, "score nan is not a finite number"),
    ("score_infinity", _line2("q1 Q0 r:b.py:5-9 2 -inf sysA"), 2, "score -inf is not a finite number"),
    ("score_text", _line2("q1 Q0 r:b.py:5-9 2 high sysA"), 2, "score 'high' is not a number"),
    ("inverted_span", _line2("q1 Q0 r:b.py:9-5 2 8.0 sysA"), 2, "inverted span: start_line 9 > end_line 5"),
    ("line_0", _line2("q1 Q0 r:b.py:0-5 2 8.0 sysA"), 2, "start_line 0 is not >= 1"),
    ("line_absurd", _line2("q1 Q0 r:b.py:5-99999999999 2 8.0 sysA"), 2, "end_line 99999999999 is past 2^31-1"),
    ("line_past_int64", _line2("q1 Q0 r:b.py:5-" + "9" * 30 + " 2 8.0 sysA"), 2, "end_line 999"),
    ("docno_no_span", _line2("q1 Q0 nospan 2 8.0 sysA"), 2, "docno 'nospan' is not repo:path:start-end"),
    ("fields", _line2("q1 Q0 r:b.py:5-9 2 8.0"), 2, "expected 6 whitespace-separated fields"),
    ("empty_file", lambda: "", 1, "empty file: a TREC run needs at least one line"),
    ("blank_lines_only", lambda: "\n  \n\n", 1, "empty file: a TREC run needs at least one line"),
    ("nul_bytes", _line2("q1 Q0 r:b.py:5-9 2 8.0 sys\x00A"), 2, "not a TREC run line: control byte 0x00"),
    ("invalid_utf8", None, 2, "not UTF-8 (byte 9 of the line: invalid start byte)"),
]


@pytest.mark.parametrize("case, body, line, message", TREC_RUN_CASES, ids=[c[0] for c in TREC_RUN_CASES])
def test_trec_run_bad_input_is_refused_with_its_line(tmp_path, capsys, case, body, line, message):
    run, qrels = tmp_path / "run.txt", tmp_path / "qrels.txt"
    qrels.write_text(_QRELS)
    if body is None:  # invalid UTF-8 inside the docno of line 2
        run.write_bytes(_RUN.replace("r:b.py", "r:\xff.py").encode("latin-1"))
    else:
        run.write_text(body())
    out = tmp_path / "o"
    where = f"{run}:{line}: "
    err = _run(
        "score[trec run]",
        case,
        ["score", "--hits", str(run), "--qrels", str(qrels), "--out", str(out)],
        capsys,
        where,
        out,
    )
    assert err[0].startswith(f"lens-eval: error: {where}{message}"), err


TREC_QRELS_CASES = [
    ("rel_above_grades", "q1 0 r:b.py:5-9 7\n", 1, "rel 7 is outside the configured grades 0..3"),
    ("rel_negative", "q1 0 r:b.py:5-9 2\nq2 0 r:d.py:1-3 -1\n", 2, "rel -1 is outside the configured grades 0..3"),
    ("rel_float", "q1 0 r:b.py:5-9 1.5\n", 1, "rel '1.5' is not an integer"),
    ("inverted_span", "q1 0 r:b.py:9-5 2\n", 1, "inverted span: start_line 9 > end_line 5"),
    ("line_0", "q1 0 r:b.py:0-5 2\n", 1, "start_line 0 is not >= 1"),
    ("empty_file", "", 1, "empty file: a TREC qrels file needs at least one line"),
    ("nul_bytes", "q1 0 r:b.py:5-9 2\n\x00\x00\n", 2, "not a TREC qrels file line: control byte 0x00"),
]


@pytest.mark.parametrize("case, body, line, message", TREC_QRELS_CASES, ids=[c[0] for c in TREC_QRELS_CASES])
def test_trec_qrels_bad_input_is_refused_with_its_line(tmp_path, capsys, case, body, line, message):
    run, qrels = tmp_path / "run.txt", tmp_path / "qrels.txt"
    run.write_text(_RUN)
    qrels.write_text(body)
    out = tmp_path / "o"
    where = f"{qrels}:{line}: "
    err = _run(
        "score[trec qrels]",
        case,
        ["score", "--hits", str(run), "--qrels", str(qrels), "--out", str(out)],
        capsys,
        where,
        out,
    )
    assert err[0].startswith(f"lens-eval: error: {where}{message}"), err


@pytest.mark.parametrize("form", ["flow", "block"])
def test_grades_follow_the_config(tmp_path, capsys, monkeypatch, form):
    """The allowed grades come from `judging.grades` (LENS_CONFIG can narrow them), written
    as lens.yaml writes it (one line) or in any other YAML form."""
    cfg = tmp_path / "narrow.yaml"
    cfg.write_text("judging:\n  grades: [0, 1]\n" if form == "flow" else "judging:\n  grades:\n    - 0\n    - 1\n")
    monkeypatch.setenv("LENS_CONFIG", str(cfg))
    run, qrels = tmp_path / "run.txt", tmp_path / "qrels.txt"
    run.write_text(_RUN)
    qrels.write_text(_QRELS)  # grade 2 on line 1
    out = tmp_path / "o"
    where = f"{qrels}:1: "
    argv = ["score", "--hits", str(run), "--qrels", str(qrels), "--out", str(out)]
    err = _run("score[trec qrels]", f"rel_outside_narrowed_grades_{form}", argv, capsys, where, out)
    assert err[0].endswith("rel 2 is outside the configured grades 0..1"), err


# ---------------------------------------------------------------------------------------------
# `lens-eval score` on Parquet hits, qrels and agg
# ---------------------------------------------------------------------------------------------
def _hits_df() -> pl.DataFrame:
    from lens_core.common.contracts import HITS_SCHEMA

    rows = []
    for s in ("sysA", "sysB"):
        for q in ("q1", "q2"):
            for rank in (1, 2, 3):
                rows.append(
                    {
                        "run_id": "r",
                        "system": s,
                        "qid": q,
                        "rank": rank,
                        "repo": "r",
                        "path": f"{q}_{rank}.py",
                        "start_line": 1,
                        "end_line": 9,
                        "score": 10.0 - rank,
                        "why_lex": True,
                        "why_struct": False,
                        "why_sem": False,
                        "shard": 0,
                        "in_sla": True,
                    }
                )
    return pl.from_arrow(pl.DataFrame(rows).to_arrow().cast(HITS_SCHEMA))


def _qrels_df() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "qid": ["q1", "q2", "q2"],
            "repo": ["r", "r", "r"],
            "path": ["q1_2.py", "q2_1.py", "zz.py"],
            "start_line": [1, 1, 3],
            "end_line": [9, 9, 4],
            "rel": [2, 1, 0],
            "source": ["t", "t", "t"],
        },
        schema_overrides={"start_line": pl.Int32, "end_line": pl.Int32, "rel": pl.Int32},
    )


def _agg_df(hits: pl.DataFrame) -> pl.DataFrame:
    keys = hits.select("run_id", "system", "qid").unique(maintain_order=True)
    n = keys.height
    return keys.with_columns(
        pl.lit("s").alias("cfg_hash"),
        pl.lit("nl").alias("suite"),
        pl.lit("nl").alias("intent"),
        pl.lit("python").alias("language"),
        pl.lit(1_700_000_000_000).cast(pl.Datetime("ms", "UTC")).alias("req_ts"),
        pl.lit(150.0).alias("sla_ms"),
        pl.Series("lat_ms", [10.0 + i for i in range(n)]),
        pl.lit(True).alias("within_sla"),
        pl.lit(3, pl.Int32).alias("n_hits"),
        pl.lit(3, pl.Int32).alias("n_hits_in_sla"),
        pl.lit(1, pl.Int32).alias("shards_total"),
        pl.lit(0, pl.Int32).alias("shards_timed_out"),
        pl.lit(1, pl.Int32).alias("probes"),
        pl.lit(1.0).alias("cpu_ms"),
        pl.lit(False).alias("hedged"),
        pl.lit(1.0).alias("why_mix_lex"),
        pl.lit(0.0).alias("why_mix_struct"),
        pl.lit(0.0).alias("why_mix_sem"),
        pl.lit(None, pl.String).alias("error"),
        pl.lit("x").alias("attestation_sha256"),
    )


def _at(df: pl.DataFrame, row: int, **values) -> pl.DataFrame:
    """`df` with `values` set on 0-based `row`."""
    idx = pl.int_range(pl.len())
    return df.with_columns(
        pl.when(idx == row).then(pl.lit(v, dtype=df.schema[c])).otherwise(pl.col(c)).alias(c) for c, v in values.items()
    )


# (case, hits frame -> bad frame, 1-based row, column, message)
PARQUET_HITS_CASES = [
    ("rank_0", lambda h: _at(h, 7, rank=0), 8, "rank", "rank 0 is not >= 1"),
    ("rank_negative", lambda h: _at(h, 2, rank=-4), 3, "rank", "rank -4 is not >= 1"),
    ("rank_duplicate", lambda h: _at(h, 10, rank=1), 11, "rank", "duplicate rank 1 for the same (run_id, system, qid)"),
    # issue 18: every row and column of the contract, not only what the metrics read
    (
        "rank_duplicate_apart",
        lambda h: _at(h, 9, qid="q1"),
        10,
        "rank",
        "duplicate rank 1 for the same (run_id, system, qid)",
    ),
    ("score_nan", lambda h: _at(h, 4, score=math.nan), 5, "score", "score nan is not a finite number"),
    (
        "score_nan_past_the_cut",
        lambda h: _at(h, 11, rank=60, score=math.nan),
        12,
        "score",
        "score nan is not a finite number",
    ),
    ("shard_negative", lambda h: _at(h, 4, shard=-2), 5, "shard", "shard -2 is not >= 0"),
    ("in_sla_null", lambda h: _at(h, 3, in_sla=None), 4, "in_sla", "in_sla is null"),
    ("why_sem_null", lambda h: _at(h, 8, why_sem=None), 9, "why_sem", "why_sem is null"),
    ("path_empty_past_the_cut", lambda h: _at(h, 2, rank=99, path=""), 3, "path", "path is empty or null"),
    (
        "shard_text",
        lambda h: _at(h.with_columns(pl.col("shard").cast(pl.String)), 6, shard="x"),
        7,
        "shard",
        "'x' is not a Int32 (the contract's type of shard)",
    ),
    ("rank_null", lambda h: _at(h, 4, rank=None), 5, "rank", "rank None is not >= 1"),
    (
        "rank_float",
        lambda h: h.with_columns(pl.col("rank").cast(pl.Float64) + pl.Series([0.0] * 5 + [0.5] + [0.0] * 6)),
        1,
        "rank",
        "1.0 is a Float64: the contract's rank is an integer",
    ),
    (
        "rank_past_int32",
        lambda h: _at(h.with_columns(pl.col("rank").cast(pl.Int64)), 4, rank=2**40),
        5,
        "rank",
        "1099511627776 is not a Int32 (the contract's type of rank)",
    ),
    (
        "rank_text",
        lambda h: _at(h.with_columns(pl.col("rank").cast(pl.String)), 2, rank="first"),
        3,
        "rank",
        "'first' is not a Int32 (the contract's type of rank)",
    ),
    ("qid_null", lambda h: _at(h, 9, qid=None), 10, "qid", "qid is empty or null"),
    ("qid_empty", lambda h: _at(h, 1, qid=""), 2, "qid", "qid is empty or null"),
    ("repo_blank", lambda h: _at(h, 5, repo="  "), 6, "repo", "repo is empty or null"),
    ("score_infinity", lambda h: _at(h, 3, score=math.inf), 4, "score", "score inf is not a finite number"),
    ("score_-infinity", lambda h: _at(h, 11, score=-math.inf), 12, "score", "score -inf is not a finite number"),
    ("score_null", lambda h: _at(h, 9, score=None), 10, "score", "score None is not a finite number"),
    ("rank_past_the_cut_null", lambda h: _at(h, 5, rank=None), 6, "rank", "rank None is not >= 1"),
    ("inverted_span", lambda h: _at(h, 6, start_line=20), 7, "end_line", "inverted span: start_line 20 > end_line 9"),
    ("start_line_0", lambda h: _at(h, 0, start_line=0), 1, "start_line", "start_line 0 is not >= 1"),
    ("end_line_negative", lambda h: _at(h, 8, end_line=-3), 9, "end_line", "end_line -3 is not >= 1"),
    ("system_null", lambda h: _at(h, 7, system=None), 8, "system", "system is empty or null"),
    ("system_empty", lambda h: _at(h, 6, system=""), 7, "system", "system is empty or null"),
]


def _score_parquet(tmp_path, capsys, entry, case, hits, qrels, agg, where) -> str:
    paths = {}
    for name, df in (("hits", hits), ("qrels", qrels), ("agg", agg)):
        if df is not None:
            paths[name] = tmp_path / f"{name}.parquet"
            df.write_parquet(paths[name])
    argv = ["score", "--hits", str(paths["hits"]), "--qrels", str(paths["qrels"]), "--no-ci"]
    if "agg" in paths:
        argv += ["--agg", str(paths["agg"])]
    out = tmp_path / "o"
    err = _run(entry, case, [*argv, "--out", str(out)], capsys, where(paths), out)
    return err[0]


@pytest.mark.parametrize("case, bad, row, column, message", PARQUET_HITS_CASES, ids=[c[0] for c in PARQUET_HITS_CASES])
def test_parquet_hits_bad_value_is_refused_with_row_and_column(tmp_path, capsys, case, bad, row, column, message):
    where = lambda paths: f"{paths['hits']}: row {row} column {column}: "  # noqa: E731
    err = _score_parquet(tmp_path, capsys, "score[parquet hits]", case, bad(_hits_df()), _qrels_df(), None, where)
    assert err == f"lens-eval: error: {tmp_path / 'hits.parquet'}: row {row} column {column}: {message}", err


def test_the_uniqueness_screen_knows_a_key_by_its_value_however_it_is_stored():
    """`_screen_unique_arrow` hashes a key by value: a qid read as a dictionary in one batch,
    as plain strings in another and proven constant by statistics in a third is one key, so
    its run coming back apart sends the file to the exact check (False); distinct keys pass."""
    import pyarrow as pa

    from lens_core.common.validate import _screen_unique_arrow

    keys = ("run_id", "system", "qid")
    consts = {"run_id": "r", "system": "s"}

    def batch(qids, ranks, as_dictionary):
        q = pa.array(qids, pa.string())
        q = q.dictionary_encode() if as_dictionary else q
        return pa.RecordBatch.from_arrays([q, pa.array(ranks, pa.int64())], names=["qid", "rank"])

    def screen(*steps):
        starts, last, dictionaries, out = set(), [None, None], {}, []
        for b, const_qid in steps:
            c = {**consts, "qid": const_qid} if const_qid else consts
            out.append(_screen_unique_arrow(b, c, keys, "rank", starts, last, dictionaries))
        return out

    dict_ab = (batch(["qA", "qA", "qB"], [1, 2, 1], True), None)
    plain_c = (batch(["qC", "qC"], [1, 2], False), None)
    assert screen(dict_ab, plain_c, (batch(["qD"], [1], False), "qD")) == [True, True, True]
    assert screen(dict_ab, plain_c, (batch(["qA"], [3], False), "qA"))[-1] is False  # constant, seen as a dictionary
    assert screen(dict_ab, plain_c, (batch(["qA", "qE"], [3, 1], False), None))[-1] is False  # plain
    assert screen(plain_c, (batch(["qD", "qC"], [1, 5], True), None))[-1] is False  # dictionary, seen plain
    assert screen(dict_ab, (batch(["qB", "qF"], [2, 1], False), None)) == [True, True]  # qB's run goes on


@pytest.mark.parametrize("batch_rows", [1, 2, 5, 1 << 18])
def test_the_parquet_stream_check_holds_across_batches(tmp_path, batch_rows):
    """`validate.parquet_violation` reads a batch at a time: a clean file passes whatever the
    batch size (rankings that span batches screened as one), a duplicate rank that spans a
    batch boundary or stands apart is found, and a bad value of the last batch is named by its
    row in the file."""
    from lens_core.common.contracts import HITS_SCHEMA
    from lens_core.common.validate import parquet_hits_rules, parquet_violation

    p = tmp_path / "h.parquet"
    cols = [f.name for f in HITS_SCHEMA]
    unique = (("run_id", "system", "qid"), "rank", "dup {value}")

    def check(df):
        df.write_parquet(p, row_group_size=3)
        return parquet_violation(p, parquet_hits_rules(), cols, unique=unique, batch_rows=batch_rows)

    h = _hits_df()
    assert check(h) is None
    assert check(_at(h, 3, rank=3)) == (6, "rank", "dup 3")  # sysA q2: 3, 2, 3 -> its third row repeats
    assert check(_at(h, 2, rank=1)) == (3, "rank", "dup 1")  # sysA q1: 1, 2, 1
    assert check(_at(h, 9, qid="q1")) == (10, "rank", "dup 1")  # sysB q1 again, apart
    assert check(_at(h, 11, score=math.nan)) == (12, "score", "score nan is not a finite number")


# issue 19, item 4: the stream check decides from row-group statistics where they prove a rule,
# reads dictionary-encoded strings as their dictionaries and skips key columns constant in a row
# group; each bad value is still named the same way, whatever the writer did.
STREAM_CHECK_CASES = [
    ("rank_0", lambda h: _at(h, 7, rank=0), (8, "rank", "rank 0 is not >= 1")),
    ("rank_null", lambda h: _at(h, 4, rank=None), (5, "rank", "rank None is not >= 1")),
    ("rank_duplicate", lambda h: _at(h, 10, rank=1), (11, "rank", "dup 1")),
    ("rank_duplicate_apart", lambda h: _at(h, 9, qid="q1"), (10, "rank", "dup 1")),
    ("rank_duplicate_other_run", lambda h: _at(h, 3, run_id="x", qid="q1"), None),
    ("score_nan", lambda h: _at(h, 4, score=math.nan), (5, "score", "score nan is not a finite number")),
    ("score_inf", lambda h: _at(h, 11, score=-math.inf), (12, "score", "score -inf is not a finite number")),
    ("shard_negative", lambda h: _at(h, 4, shard=-2), (5, "shard", "shard -2 is not >= 0")),
    ("shard_null", lambda h: _at(h, 4, shard=None), None),
    ("in_sla_null", lambda h: _at(h, 3, in_sla=None), (4, "in_sla", "in_sla is null")),
    ("why_lex_null", lambda h: _at(h, 11, why_lex=None), (12, "why_lex", "why_lex is null")),
    ("path_blank", lambda h: _at(h, 2, path=" \t"), (3, "path", "path is empty or null")),
    ("path_leading_space", lambda h: _at(h, 2, path=" a.py"), None),
    ("repo_empty", lambda h: _at(h, 6, repo=""), (7, "repo", "repo is empty or null")),
    ("repo_null", lambda h: _at(h, 6, repo=None), (7, "repo", "repo is empty or null")),
    ("qid_empty", lambda h: _at(h, 5, qid=""), (6, "qid", "qid is empty or null")),
    ("system_blank", lambda h: _at(h, 0, system=" "), (1, "system", "system is empty or null")),
    ("run_id_null", lambda h: _at(h, 11, run_id=None), (12, "run_id", "run_id is empty or null")),
    ("start_line_0", lambda h: _at(h, 1, start_line=0), (2, "start_line", "start_line 0 is not >= 1")),
    ("end_line_null", lambda h: _at(h, 1, end_line=None), (2, "end_line", "end_line None is not >= 1")),
    (
        "inverted_span",
        lambda h: _at(h, 9, start_line=12),
        (10, "end_line", "inverted span: start_line 12 > end_line 9"),
    ),
    (
        "end_line_past_int32",
        lambda h: _at(h.with_columns(pl.col("end_line").cast(pl.Int64)), 9, end_line=2**31),
        (10, "end_line", "end_line 2147483648 is past 2^31-1"),
    ),
]


def _write_pyarrow_dictionary(df: pl.DataFrame, p: Path) -> None:
    """Strings as Arrow dictionary types (pyarrow keeps them in the file's Arrow schema)."""
    import pyarrow as pa
    import pyarrow.parquet as papq

    t = df.to_arrow()
    strings = (pa.string(), pa.large_string())
    schema = pa.schema(
        [(f.name, pa.dictionary(pa.int32(), pa.string()) if f.type in strings else f.type) for f in t.schema]
    )
    papq.write_table(t.cast(schema), p, row_group_size=4)


def _write_pyarrow_plain(df: pl.DataFrame, p: Path) -> None:
    import pyarrow.parquet as papq

    papq.write_table(df.to_arrow(), p, use_dictionary=False, row_group_size=7)


STREAM_WRITERS = {
    "polars": lambda df, p: df.write_parquet(p),
    "polars_groups_of_2": lambda df, p: df.write_parquet(p, row_group_size=2),
    "no_statistics": lambda df, p: df.write_parquet(p, statistics=False, row_group_size=5),
    "pyarrow_dictionary_types": _write_pyarrow_dictionary,
    "pyarrow_plain": _write_pyarrow_plain,
}


@pytest.mark.parametrize("writer", sorted(STREAM_WRITERS))
@pytest.mark.parametrize("case, bad, expected", STREAM_CHECK_CASES, ids=[c[0] for c in STREAM_CHECK_CASES])
def test_the_parquet_stream_check_names_every_bad_value_whatever_the_writer(tmp_path, case, bad, expected, writer):
    from lens_core.common.contracts import HITS_SCHEMA
    from lens_core.common.validate import parquet_hits_rules, parquet_violation

    p = tmp_path / "h.parquet"
    STREAM_WRITERS[writer](bad(_hits_df()), p)
    cols = [f.name for f in HITS_SCHEMA]
    unique = (("run_id", "system", "qid"), "rank", "dup {value}")
    for batch_rows in (3, 1 << 18):
        got = parquet_violation(p, parquet_hits_rules(), cols, unique=unique, batch_rows=batch_rows)
        assert got == expected, (writer, batch_rows, got)


def test_parquet_hits_with_no_rows_is_refused(tmp_path, capsys):
    where = lambda paths: f"{paths['hits']}: no hits"  # noqa: E731
    _score_parquet(tmp_path, capsys, "score[parquet hits]", "zero_hits", _hits_df().head(0), _qrels_df(), None, where)


PARQUET_QRELS_CASES = [
    ("rel_above_grades", lambda q: _at(q, 1, rel=9), 2, "rel", "rel 9 is outside the configured grades 0..3"),
    ("rel_null", lambda q: _at(q, 2, rel=None), 3, "rel", "rel None is outside the configured grades 0..3"),
    ("qid_null", lambda q: _at(q, 0, qid=None), 1, "qid", "qid is empty or null"),
    ("path_empty", lambda q: _at(q, 2, path=""), 3, "path", "path is empty or null"),
    ("inverted_span", lambda q: _at(q, 1, end_line=0), 2, "end_line", "end_line 0 is not >= 1"),
    (
        "rel_float",
        lambda q: q.with_columns(pl.col("rel").cast(pl.Float64)),
        1,
        "rel",
        "2.0 is a Float64: the contract's rel is an integer",
    ),
]


@pytest.mark.parametrize(
    "case, bad, row, column, message", PARQUET_QRELS_CASES, ids=[c[0] for c in PARQUET_QRELS_CASES]
)
def test_parquet_qrels_bad_value_is_refused_with_row_and_column(tmp_path, capsys, case, bad, row, column, message):
    where = lambda paths: f"{paths['qrels']}: row {row} column {column}: "  # noqa: E731
    err = _score_parquet(tmp_path, capsys, "score[parquet qrels]", case, _hits_df(), bad(_qrels_df()), None, where)
    assert err == f"lens-eval: error: {tmp_path / 'qrels.parquet'}: row {row} column {column}: {message}", err


def test_parquet_qrels_with_no_rows_is_refused(tmp_path, capsys):
    where = lambda paths: f"{paths['qrels']}: no judgments"  # noqa: E731
    _score_parquet(
        tmp_path, capsys, "score[parquet qrels]", "zero_judgments", _hits_df(), _qrels_df().head(0), None, where
    )


PARQUET_AGG_CASES = [
    ("lat_ms_nan", lambda a: _at(a, 2, lat_ms=math.nan), 3, "lat_ms", "lat_ms nan is not a finite number"),
    ("lat_ms_negative", lambda a: _at(a, 1, lat_ms=-1.0), 2, "lat_ms", "lat_ms -1.0 is negative"),
    ("sla_ms_infinity", lambda a: _at(a, 0, sla_ms=math.inf), 1, "sla_ms", "sla_ms inf is not a finite number"),
    ("cpu_ms_nan", lambda a: _at(a, 3, cpu_ms=math.nan), 4, "cpu_ms", "cpu_ms nan is not a finite number"),
    ("qid_empty", lambda a: _at(a, 1, qid=""), 2, "qid", "qid is empty or null"),
    (
        "duplicate_query",
        lambda a: _at(a, 1, qid="q1"),
        2,
        "qid",
        "duplicate row for (run_id, system, qid) = ('r', 'sysA', 'q1')",
    ),
]


@pytest.mark.parametrize("case, bad, row, column, message", PARQUET_AGG_CASES, ids=[c[0] for c in PARQUET_AGG_CASES])
def test_parquet_agg_bad_value_is_refused_with_row_and_column(tmp_path, capsys, case, bad, row, column, message):
    hits = _hits_df()
    where = lambda paths: f"{paths['agg']}: row {row} column {column}: "  # noqa: E731
    err = _score_parquet(tmp_path, capsys, "score[parquet agg]", case, hits, _qrels_df(), bad(_agg_df(hits)), where)
    assert err == f"lens-eval: error: {tmp_path / 'agg.parquet'}: row {row} column {column}: {message}", err


def test_good_parquet_inputs_still_score(tmp_path, capsys):
    hits = _hits_df()
    for name, df in (("hits", hits), ("qrels", _qrels_df()), ("agg", _agg_df(hits))):
        df.write_parquet(tmp_path / f"{name}.parquet")
    argv = ["score", "--hits", str(tmp_path / "hits.parquet"), "--qrels", str(tmp_path / "qrels.parquet")]
    assert main([*argv, "--agg", str(tmp_path / "agg.parquet"), "--out", str(tmp_path / "o"), "--no-ci"]) == 0
    pq = pl.read_parquet(tmp_path / "o" / "per_query.parquet")
    assert pq.height == 4 and pq.filter(pl.col("qid") == "q1")["mrr_10"].to_list() == [0.5, 0.5]


# ---------------------------------------------------------------------------------------------
# --out naming an existing file
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["score", "ingest"])
def test_out_naming_an_existing_file_is_refused(tmp_path, capsys, records, command):
    run, qrels = tmp_path / "run.txt", tmp_path / "qrels.txt"
    run.write_text(_RUN)
    qrels.write_text(_QRELS)
    raw = _write_ndjson(tmp_path / "x.ndjson", [json.loads(encode_record(r)) for r in records])
    for i, out in enumerate((tmp_path / "taken", tmp_path / "taken" / "below")):
        (tmp_path / "taken").write_text("keep me")
        argv = (
            ["score", "--hits", str(run), "--qrels", str(qrels), "--out", str(out)]
            if command == "score"
            else ["ingest", str(raw), "--out", str(out)]
        )
        try:
            rc = main(argv)
        except BaseException as e:
            TALLY.append({"entry": command, "case": f"out_is_a_file_{i}", "outcome": "crashed"})
            raise AssertionError(repr(e)) from e
        err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        ok = rc == 2 and len(err) == 1 and str(tmp_path / "taken") in err[0] and "not a directory" in err[0]
        TALLY.append({"entry": command, "case": f"out_is_a_file_{i}", "outcome": "refused" if ok else "unclear"})
        assert ok, (rc, err)
        assert (tmp_path / "taken").read_text() == "keep me"


# ---------------------------------------------------------------------------------------------
# Size guards: a 2 GB sparse file is refused early on every entry point
# ---------------------------------------------------------------------------------------------
# The child reports its own peak RSS (VmHWM: the high-water mark of its own memory since exec;
# wait4's ru_maxrss would also count the pages of this test process it was forked from).
_CHILD = """
import sys
from lens_cli.main import main
try:
    code = main(sys.argv[2:])
finally:
    with open("/proc/self/status") as f:
        hwm = [x.split()[1] for x in f if x.startswith("VmHWM:")]
    with open(sys.argv[1], "w") as f:
        f.write(hwm[0] if hwm else "")
sys.exit(code)
"""


def _measured(argv: list[str], tmp_path: Path) -> tuple[int, str, float, float]:
    """Run `lens-eval argv` in a child: (exit code, stderr, wall seconds, peak RSS in MB)."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak RSS is read from /proc (Linux)")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    hwm = tmp_path / "vmhwm.txt"
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-c", _CHILD, str(hwm), *argv], cwd=REPO, capture_output=True, text=True, env=env, timeout=120
    )
    wall = time.monotonic() - t0
    return p.returncode, p.stderr, wall, int(hwm.read_text()) / 1024


SPARSE_CASES = [
    ("ingest", "ndjson", lambda f, ok: ["ingest", str(f), "--out", str(f.parent / "out")], ":1: "),
    (
        "score[trec run]",
        "trec",
        lambda f, ok: ["score", "--hits", str(f), "--qrels", str(ok["qrels"]), "--out", str(f.parent / "out")],
        ":1: ",
    ),
    (
        "score[trec qrels]",
        "qrels",
        lambda f, ok: ["score", "--hits", str(ok["run"]), "--qrels", str(f), "--out", str(f.parent / "out")],
        ":1: ",
    ),
    (
        "score[parquet hits]",
        "parquet",
        lambda f, ok: ["score", "--hits", str(f), "--qrels", str(ok["qrels"]), "--out", str(f.parent / "out")],
        ": cannot read Parquet",
    ),
    (
        "score[parquet qrels]",
        "parquet",
        lambda f, ok: ["score", "--hits", str(ok["run"]), "--qrels", str(f), "--out", str(f.parent / "out")],
        ": cannot read Parquet",
    ),
    (
        "score[parquet agg]",
        "parquet",
        lambda f, ok: [
            "score",
            "--hits",
            str(ok["run"]),
            "--qrels",
            str(ok["qrels"]),
            "--agg",
            str(f),
            "--out",
            str(f.parent / "out"),
        ],
        ": cannot read Parquet",
    ),
]
SPARSE_RESULTS: dict[str, tuple[float, float]] = {}


@pytest.mark.e2e
@pytest.mark.parametrize("entry, suffix, argv, where", SPARSE_CASES, ids=[c[0] for c in SPARSE_CASES])
def test_a_2gb_sparse_file_is_refused_early(tmp_path, entry, suffix, argv, where):
    """`truncate -s 2G`: refused with one line, exit 2, under 500 MB peak RSS and 5 s (loosely:
    the child's whole life, imports included)."""
    f = tmp_path / f"sparse.{suffix}"
    with open(f, "wb") as fh:
        fh.truncate(2 << 30)
    ok = {"run": tmp_path / "run.txt", "qrels": tmp_path / "qrels.txt"}
    ok["run"].write_text(_RUN)
    ok["qrels"].write_text(_QRELS)
    rc, err, wall, rss = _measured(argv(f, ok), tmp_path)
    lines = [x for x in err.splitlines() if x.strip()]
    refused = rc == 2 and len(lines) == 1 and f"{f}{where}" in lines[0]
    TALLY.append({"entry": f"{entry} 2GB sparse", "case": "sparse_2gb", "outcome": "refused" if refused else "unclear"})
    SPARSE_RESULTS[entry] = (rss, wall)
    print(f"2 GB sparse file, {entry}: peak RSS {rss:.0f} MB, {wall:.2f} s: {lines[-1] if lines else ''}")
    assert refused, (rc, err[-2000:])
    assert not (tmp_path / "out").exists()
    assert rss < 500, f"peak RSS {rss:.0f} MB"
    assert wall < 15, f"{wall:.1f} s"  # target 5 s; loose for a loaded CI machine
