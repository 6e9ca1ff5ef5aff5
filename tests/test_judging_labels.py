"""Labels are explicit or absent (issue 16): the labelling policies, human precedence, the human
qrels reader's refusals, unknown qids, the pool gate's reason and the unjudged share per slice.

Small synthetic frames only (fast). One query layout serves most tests:

    q1: ground truth r:a.py:10-20 (rel 3); pool members a.py:10-20 (the span itself),
        a.py:12-18 (inside it: span credit), c.py:1-9 and d.py:1-3 (nobody labelled them)
    q2: ground truth r:b.py:1-5 (rel 2); pool members b.py:1-5 and e.py:1-2
    q3: no ground truth; pool member f.py:1-2
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from lens_core.decide import gates as G
from lens_core.judge.judging import judge, judged_members, pool_counts, unjudged_share
from lens_core.judge.qrels import QrelsError, human_qrels_paths, known_qids, read_qrels_files
from lens_core.measures.metrics import per_query_metrics
from lens_core.measures.scoring import score

SPAN = ["qid", "repo", "path", "start_line", "end_line"]
GRADES = (0, 1, 2, 3)

# (system, qid, rank, path, start, end)
HITS = [
    ("s1", "q1", 1, "a.py", 10, 20),
    ("s1", "q1", 2, "c.py", 1, 9),
    ("s1", "q1", 3, "d.py", 1, 3),
    ("s2", "q1", 1, "a.py", 12, 18),
    ("s2", "q1", 2, "c.py", 1, 9),
    ("s1", "q2", 1, "e.py", 1, 2),
    ("s1", "q2", 2, "b.py", 1, 5),
    ("s2", "q2", 1, "b.py", 1, 5),
    ("s1", "q3", 1, "f.py", 1, 2),
    ("s2", "q3", 1, "f.py", 1, 2),
]


def _hits() -> pl.DataFrame:
    return pl.DataFrame(
        [("r", s, q, rk, "r", p, a, b, True) for s, q, rk, p, a, b in HITS],
        schema={
            "run_id": pl.String,
            "system": pl.String,
            "qid": pl.String,
            "rank": pl.Int32,
            "repo": pl.String,
            "path": pl.String,
            "start_line": pl.Int32,
            "end_line": pl.Int32,
            "in_sla": pl.Boolean,
        },
        orient="row",
    )


def _agg(intents: dict[str, str] | None = None) -> pl.DataFrame:
    intents = intents or {"q1": "nl", "q2": "identifier", "q3": "nl"}
    rows = [("r", s, q, "suite", intents[q], "python", 10.0, True, 1, 1.0, None) for s in ("s1", "s2") for q in intents]
    return pl.DataFrame(
        rows,
        schema={
            "run_id": pl.String,
            "system": pl.String,
            "qid": pl.String,
            "suite": pl.String,
            "intent": pl.String,
            "language": pl.String,
            "lat_ms": pl.Float64,
            "within_sla": pl.Boolean,
            "probes": pl.Int32,
            "cpu_ms": pl.Float64,
            "error": pl.String,
        },
        orient="row",
    )


def _pool() -> pl.DataFrame:
    return (
        _hits()
        .group_by(SPAN)
        .agg(pl.col("system").unique().sort().alias("systems"), pl.col("rank").min().alias("best_rank"))
        .sort(SPAN)
    )


def _frame(rows, source: str | None = None) -> pl.DataFrame:
    """rows: (qid, path, start, end, rel) in repo `r`."""
    df = pl.DataFrame(
        [(q, "r", p, a, b, rel) for q, p, a, b, rel in rows],
        schema={
            "qid": pl.String,
            "repo": pl.String,
            "path": pl.String,
            "start_line": pl.Int32,
            "end_line": pl.Int32,
            "rel": pl.Int32,
        },
        orient="row",
    )
    return df if source is None else df.with_columns(pl.lit(source).alias("source"))


GT = _frame([("q1", "a.py", 10, 20, 3), ("q2", "b.py", 1, 5, 2)])


def _labels(q: pl.DataFrame) -> dict[tuple, tuple[int, str]]:
    return {(r["qid"], r["path"], r["start_line"], r["end_line"]): (r["rel"], r["source"]) for r in q.to_dicts()}


def _judged_10(qrels: pl.DataFrame) -> dict[tuple[str, str], float | None]:
    pq = per_query_metrics(_agg(), _hits(), qrels)
    return {(s, q): v for s, q, v in pq.select("system", "qid", "judged_10").iter_rows()}


# ---------------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------------
def test_explicit_policy_labels_only_what_someone_labelled():
    q = judge(_pool(), GT, policy="explicit")
    assert _labels(q) == {("q1", "a.py", 10, 20): (3, "ground_truth"), ("q2", "b.py", 1, 5): (2, "ground_truth")}
    assert q.columns == SPAN + ["rel", "source"]
    # c.py, d.py, e.py, f.py: nobody labelled them, so they are not in the qrels ...
    assert q.join(_pool(), on=SPAN, how="semi").height == 2
    # ... and count as unjudged in judged@10 (a.py:12-18 earns span credit: judged)
    j = _judged_10(q)
    assert j[("s1", "q1")] == pytest.approx(1 / 3)  # a.py:10-20 judged; c.py, d.py not
    assert j[("s2", "q1")] == pytest.approx(1 / 2)  # a.py:12-18 by span credit; c.py not
    assert j[("s1", "q2")] == pytest.approx(1 / 2)  # b.py judged; e.py not
    assert j[("s2", "q2")] == 1.0
    assert j[("s1", "q3")] == 0.0 and j[("s2", "q3")] == 0.0  # no label at all
    flags = {(r["qid"], r["path"], r["start_line"]): r["judged"] for r in judged_members(_pool(), q).to_dicts()}
    assert flags == {
        ("q1", "a.py", 10): True,
        ("q1", "a.py", 12): True,
        ("q1", "c.py", 1): False,
        ("q1", "d.py", 1): False,
        ("q2", "b.py", 1): True,
        ("q2", "e.py", 1): False,
        ("q3", "f.py", 1): False,
    }
    pc = {r["system"]: r for r in pool_counts(_pool(), q).to_dicts()}
    assert pc["s1"]["judged_share"] == pytest.approx(2 / 6)  # a.py, b.py of a, c, d, e, b, f
    assert pc["s2"]["judged_share"] == pytest.approx(2 / 4)  # a.py:12-18, b.py of a, c, b, f


def test_codesearchnet_policy_labels_the_rest_of_a_ground_truth_query_non_relevant():
    q = judge(_pool(), GT, policy="codesearchnet")
    assert _labels(q) == {
        ("q1", "a.py", 10, 20): (3, "ground_truth"),
        ("q1", "c.py", 1, 9): (0, "policy:codesearchnet"),
        ("q1", "d.py", 1, 3): (0, "policy:codesearchnet"),
        ("q2", "b.py", 1, 5): (2, "ground_truth"),
        ("q2", "e.py", 1, 2): (0, "policy:codesearchnet"),
    }
    # a.py:12-18 earns span credit (not labelled 0); q3 has no ground truth (nothing labelled)
    j = _judged_10(q)
    assert {k: v for k, v in j.items() if k[1] != "q3"} == {
        ("s1", "q1"): 1.0,
        ("s2", "q1"): 1.0,
        ("s1", "q2"): 1.0,
        ("s2", "q2"): 1.0,
    }
    assert j[("s1", "q3")] == 0.0
    assert judged_members(_pool(), q).filter(~pl.col("judged"))["path"].to_list() == ["f.py"]
    # the same ground truth under `explicit` judges less: the policy is what makes the difference
    assert sum(judged_members(_pool(), judge(_pool(), GT))["judged"]) == 3 < 6


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown labelling policy 'trec'"):
        judge(_pool(), GT, policy="trec")


def test_human_labels_take_precedence_span_by_span_and_keep_their_source():
    human = _frame(
        [
            ("q1", "a.py", 10, 20, 1),  # overrides the ground truth's rel 3
            ("q1", "d.py", 1, 3, 2),  # overrides the policy's rel 0
            ("q3", "f.py", 1, 2, 0),  # a query without ground truth
        ],
        "human:alice@example.com",
    )
    for policy in ("explicit", "codesearchnet"):
        q = judge(_pool(), GT, human, policy=policy)
        labels = _labels(q)
        assert labels[("q1", "a.py", 10, 20)] == (1, "human:alice@example.com")
        assert labels[("q1", "d.py", 1, 3)] == (2, "human:alice@example.com")
        assert labels[("q3", "f.py", 1, 2)] == (0, "human:alice@example.com")
        assert labels[("q2", "b.py", 1, 5)] == (2, "ground_truth")  # spans nobody relabelled stay
        assert q.select(SPAN).is_duplicated().sum() == 0  # one label per span
        if policy == "codesearchnet":
            assert labels[("q1", "c.py", 1, 9)] == (0, "policy:codesearchnet")
        else:
            assert ("q1", "c.py", 1, 9) not in labels
    # human rows without a source column are `human`; a null source too
    plain = judge(_pool(), GT, _frame([("q2", "e.py", 1, 2, 1)]))
    assert _labels(plain)[("q2", "e.py", 1, 2)] == (1, "human")
    nulls = _frame([("q2", "e.py", 1, 2, 1)]).with_columns(pl.lit(None, pl.String).alias("source"))
    assert _labels(judge(_pool(), GT, nulls))[("q2", "e.py", 1, 2)] == (1, "human")
    # human labels make pool members judged under `explicit`: judged@10 rises
    before, after = _judged_10(judge(_pool(), GT)), _judged_10(q)
    assert after[("s1", "q1")] > before[("s1", "q1")] and after[("s1", "q3")] == 1.0


# ---------------------------------------------------------------------------------------------
# The human qrels reader
# ---------------------------------------------------------------------------------------------
def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_trec_qrels_with_comments_tabs_crlf_and_identical_duplicates(tmp_path):
    a = _write(
        tmp_path / "a.qrels",
        b"# judged 2026-11 by alice\r\nq1\t0\tr:a.py:10-20\t2\r\n\r\n  q1 0 r:c.py:1-9 0  \r\n"
        b"q2 0 org/x:src/deep/b.py:1-5 3\r\nq1 0 r:a.py:10-20 2\r\n",
    )
    b = _write(tmp_path / "b.txt", "q1 Q0 r:a.py:10-20 2\n#q9 0 r:z.py:1-2 9\n")
    q = read_qrels_files([a, b], GRADES)
    assert q.columns == SPAN + ["rel", "source"]
    assert q.schema["rel"] == pl.Int32 and q.schema["start_line"] == pl.Int32
    assert q.rows() == [
        ("q1", "r", "a.py", 10, 20, 2, "human:a.qrels"),  # kept once (twice in a, once in b)
        ("q1", "r", "c.py", 1, 9, 0, "human:a.qrels"),
        ("q2", "org/x", "src/deep/b.py", 1, 5, 3, "human:a.qrels"),
    ]
    only_comments = _write(tmp_path / "c.qrels", "# nothing yet\n\n")
    assert read_qrels_files([only_comments], GRADES).height == 0
    assert read_qrels_files([], GRADES).height == 0


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("q1 0 r:a.py:1-2 1\nq1 0 r:b.py:1-2 4\n", 2, "relevance 4 outside the configured grades 0..3"),
        ("q1 0 r:a.py:1-2 -1\n", 1, "relevance -1 outside the configured grades 0..3"),
        ("# c\nq1 0 r:a.py:9-2 1\n", 2, "span start 9 > end 2"),
        ("q1 0 r:a.py:0-2 1\n", 1, "start line 0 < 1"),
        ("q1 0 r:a.py:1-2 1\nq1 0 r-a.py-1-2 1\n", 2, "docno 'r-a.py-1-2' is not repo:path:start-end"),
        ("q1 0 r:a.py 1\n", 1, "docno 'r:a.py' is not repo:path:start-end"),
        ("q1 0 r:a.py:1-x 1\n", 1, "is not repo:path:start-end"),
        ("q1 0 r:a.py:1-2 high\n", 1, "relevance 'high' is not an integer"),
        ("\t0 r:a.py:1-2 1\n", 1, "expected 4 fields"),  # an empty qid leaves three fields
        ("q1 0 r:a.py:1-2 1 extra\n", 1, "expected 4 fields"),
    ],
)
def test_trec_refusals_name_file_and_line(tmp_path, text, line, message):
    p = _write(tmp_path / "bad.qrels", text)
    with pytest.raises(QrelsError) as err:
        read_qrels_files([p], GRADES)
    msg = str(err.value)
    assert msg.startswith(f"{p}:{line}: ") and message in msg and "\n" not in msg


def test_grade_range_comes_from_the_configured_grades(tmp_path):
    p = _write(tmp_path / "g.qrels", "q1 0 r:a.py:1-2 3\n")
    assert read_qrels_files([p], GRADES)["rel"].to_list() == [3]
    with pytest.raises(QrelsError, match=rf"^{p}:1: relevance 3 outside the configured grades 0..2$"):
        read_qrels_files([p], (0, 1, 2))


def test_non_utf8_is_refused_with_its_line(tmp_path):
    p = _write(tmp_path / "latin1.qrels", "q1 0 r:a.py:1-2 1\nq1 0 r:caf\xe9.py:1-2 1\n".encode("latin-1"))
    with pytest.raises(QrelsError, match=rf"^{p}:2: not UTF-8"):
        read_qrels_files([p], GRADES)


def test_conflicting_duplicates_across_two_files_name_both_places(tmp_path):
    a = _write(tmp_path / "alice.qrels", "q1 0 r:x.py:1-2 0\nq1 0 r:a.py:10-20 2\n")
    b = _write(tmp_path / "bob.qrels", "# bob\nq2 0 r:b.py:1-5 1\nq1 0 r:a.py:10-20 3\n")
    with pytest.raises(QrelsError) as err:
        read_qrels_files([a, b], GRADES)
    msg = str(err.value)
    assert msg.startswith(f"{b}:3: conflicting label for q1 r:a.py:10-20")
    assert "rel 3 here" in msg and f"2 at {a}:2" in msg and "\n" not in msg
    # within one file as well
    c = _write(tmp_path / "c.qrels", "q1 0 r:a.py:10-20 2\nq1 0 r:a.py:10-20 1\n")
    with pytest.raises(QrelsError, match=rf"^{c}:2: conflicting label .* 2 at {c}:1$"):
        read_qrels_files([c], GRADES)


def _parquet(path: Path, rows: list[tuple], source: list | None = None) -> Path:
    df = pl.DataFrame(
        rows,
        schema={
            "qid": pl.String,
            "repo": pl.String,
            "path": pl.String,
            "start_line": pl.Int32,
            "end_line": pl.Int32,
            "rel": pl.Int32,
        },
        orient="row",
    )
    if source is not None:
        df = df.with_columns(pl.Series("source", source, dtype=pl.String))
    df.write_parquet(path)
    return path


def test_parquet_qrels_keep_their_source_and_refusals_name_the_row(tmp_path):
    good = _parquet(
        tmp_path / "ls.parquet",
        [("q1", "r", "a.py", 10, 20, 3), ("q2", "r", "b.py", 1, 5, 1)],
        ["human:alice@example.com", None],
    )
    q = read_qrels_files([good], GRADES)
    assert q.rows() == [
        ("q1", "r", "a.py", 10, 20, 3, "human:alice@example.com"),
        ("q2", "r", "b.py", 1, 5, 1, "human:ls.parquet"),
    ]
    cases = [
        ([("q1", "r", "a.py", 1, 2, 1), ("q1", "r", "b.py", 1, 2, 7)], "row 2: relevance 7 outside"),
        ([("q1", "r", "a.py", 1, 2, 1), ("q1", "r", "b.py", 1, 2, 1), ("", "r", "c.py", 1, 2, 1)], "row 3: empty qid"),
        ([(None, "r", "c.py", 1, 2, 1)], "row 1: empty qid"),
        ([("q1", "r", "a.py", 5, 4, 1)], "row 1: span start 5 > end 4"),
        ([("q1", "", "a.py", 1, 2, 1)], "row 1: empty repo or path"),
        ([("q1", "r", "a.py", 1, 2, 1), ("q1", "r", "a.py", 1, 2, 2)], "row 2: conflicting label for q1 r:a.py:1-2"),
    ]
    for i, (rows, message) in enumerate(cases):
        p = _parquet(tmp_path / f"bad{i}.parquet", rows)
        with pytest.raises(QrelsError) as err:
            read_qrels_files([p], GRADES)
        assert str(err.value).startswith(f"{p}: {message}"), (i, str(err.value))
    # a TREC file and a Parquet file in conflict: both places named
    t = _write(tmp_path / "t.qrels", "q1 0 r:a.py:10-20 0\n")
    with pytest.raises(QrelsError, match=rf"^{t}:1: conflicting label .* 3 at {good}: row 1$"):
        read_qrels_files([good, t], GRADES)
    # agreeing across the two shapes: kept once, with the first file's source
    same = _write(tmp_path / "same.qrels", "q1 0 r:a.py:10-20 3\n")
    assert read_qrels_files([good, same], GRADES).height == 2
    # not the qrels contract
    pl.DataFrame({"qid": ["q1"], "rel": [1]}).write_parquet(tmp_path / "cols.parquet")
    with pytest.raises(QrelsError, match=r"cols.parquet: missing column\(s\) repo, path, start_line, end_line"):
        read_qrels_files([tmp_path / "cols.parquet"], GRADES)
    _write(tmp_path / "junk.parquet", b"not parquet")
    with pytest.raises(QrelsError, match=r"junk.parquet: not a readable Parquet file"):
        read_qrels_files([tmp_path / "junk.parquet"], GRADES)


def test_human_qrels_paths_read_the_setting_then_the_judgments_dir(tmp_path):
    a = _write(tmp_path / "a.qrels", "q1 0 r:a.py:1-2 1\n")
    b = _parquet(tmp_path / "b.parquet", [("q1", "r", "b.py", 1, 2, 1)])
    jd = tmp_path / "judgments"
    jd.mkdir()
    c = _parquet(jd / "export1.parquet", [("q1", "r", "c.py", 1, 2, 1)])
    _write(jd / "notes.md", "not a qrels file")
    assert human_qrels_paths(f"{a}, {b}", jd) == [a, b, c]
    assert human_qrels_paths(f"{jd},{c}", jd) == [c]  # each file once
    assert human_qrels_paths("", tmp_path / "absent") == []
    with pytest.raises(QrelsError, match="nope.qrels: no such qrels file"):
        human_qrels_paths(str(tmp_path / "nope.qrels"), jd)


def test_unknown_qids_are_reported_and_their_labels_left_out(tmp_path):
    p = _write(tmp_path / "h.qrels", "q1 0 r:a.py:1-2 1\nqX 0 r:a.py:1-2 1\nqA 0 r:b.py:1-2 0\nqX 0 r:c.py:1-2 2\n")
    q = read_qrels_files([p], GRADES)
    kept, unknown = known_qids(q, pl.DataFrame({"qid": ["q1", "q2"], "text": ["a", "b"]}))
    assert unknown == ["qA", "qX"]
    assert kept["qid"].to_list() == ["q1"] and kept.columns == q.columns
    assert known_qids(q, pl.DataFrame({"qid": ["q1", "qA", "qX"]}))[1] == []


# ---------------------------------------------------------------------------------------------
# The pool gate and the unjudged share
# ---------------------------------------------------------------------------------------------
def _scores(rows) -> pl.DataFrame:
    """rows: (system, slice, metric, mean)"""
    return pl.DataFrame(
        [{"system": s, "slice": sl, "metric": m, "mean": v, "ci_low": v, "ci_high": v, "n": 10} for s, sl, m, v in rows]
    )


def test_pool_gate_failure_names_the_unjudged_share_and_the_queue():
    scores = _scores([("a", "all", "judged_10", 0.6), ("b", "all", "judged_10", 0.95), ("b", "all", "ndcg_10", 0.5)])
    path = "/data/judging/2026-11-01/tasks.json"
    a, b = G.pool_gate(scores, 37, path)
    assert (a.subject, a.passed, a.blocking) == ("a", False, True)
    assert a.value == pytest.approx(0.6)
    assert a.reason == (
        f"judged@10 = 0.600 (>= 0.9), 40.0% of the top 10 unjudged; 37 pool member(s) to judge in the judging "
        f"queue ({path})"
    )
    assert (b.subject, b.passed) == ("b", True) and b.reason == "judged@10 = 0.950 (>= 0.9)"
    # without a queue the reason still gives the unjudged share; an empty queue names no path
    (a0,) = G.pool_gate(scores.filter(pl.col("system") == "a"))
    assert a0.reason == "judged@10 = 0.600 (>= 0.9), 40.0% of the top 10 unjudged"
    (a1,) = G.pool_gate(scores.filter(pl.col("system") == "a"), 0, path)
    assert "0 pool member(s) to judge" in a1.reason and path not in a1.reason
    (m,) = G.pool_gate(scores.filter(pl.col("metric") != "judged_10"), 5, path)
    assert not m.passed and "judged_10" in m.reason


def test_unjudged_share_pivots_per_slice():
    scores = _scores(
        [
            ("a", "all", "judged_10", 0.75),
            ("a", "intent=nl", "judged_10", 0.5),
            ("a", "intent=identifier", "judged_10", 1.0),
            ("b", "all", "judged_10", 0.9),
            ("b", "intent=nl", "judged_10", 0.8),
            ("b", "intent=identifier", "judged_10", 1.0),
            ("a", "all", "ndcg_10", 0.3),
        ]
    )
    u = unjudged_share(scores)
    assert u.columns[0] == "system" and set(u.columns) == {"system", "all", "intent=nl", "intent=identifier"}
    assert u["system"].to_list() == ["a", "b"]
    assert u["all"].to_list() == pytest.approx([0.25, 0.1])
    assert u["intent=nl"].to_list() == pytest.approx([0.5, 0.2])
    assert u["intent=identifier"].to_list() == pytest.approx([0.0, 0.0])
    empty = unjudged_share(scores.filter(pl.col("metric") != "judged_10"))
    assert empty.columns == ["system"] and empty.height == 0


def test_explicit_labels_give_the_unjudged_share_the_gate_reports():
    """Through the real measures: per_query_metrics -> score -> unjudged_share and pool_gate."""
    per_query = per_query_metrics(_agg(), _hits(), judge(_pool(), GT, policy="explicit"))
    scores = score(per_query, b=200, seed=1)
    u = {r["system"]: r for r in unjudged_share(scores).to_dicts()}
    # s1: top-10 hits 3 + 2 + 1 = 6, judged 1 + 1 + 0; s2: 2 + 1 + 1 = 4, judged 1 + 1 + 0
    assert u["s1"]["all"] == pytest.approx(round(1 - 2 / 6, 4))
    assert u["s2"]["all"] == pytest.approx(0.5)
    # slices: q1, q3 are nl, q2 identifier
    assert u["s1"]["intent=nl"] == pytest.approx(round(1 - 1 / 4, 4))
    assert u["s1"]["intent=identifier"] == pytest.approx(0.5)
    assert u["s2"]["intent=identifier"] == pytest.approx(0.0)
    gates = {g.subject: g for g in G.pool_gate(scores, 5, "/q/tasks.json")}
    assert not gates["s1"].passed and "66.7% of the top 10 unjudged; 5 pool member(s)" in gates["s1"].reason
    # the same hits under the CodeSearchNet policy: q3 (no ground truth) is all that stays unjudged
    csn = score(per_query_metrics(_agg(), _hits(), judge(_pool(), GT, policy="codesearchnet")), b=200, seed=1)
    assert {r["system"]: r["all"] for r in unjudged_share(csn).to_dicts()} == pytest.approx(
        {"s1": round(1 / 6, 4), "s2": 0.25}
    )


# ---------------------------------------------------------------------------------------------
# `lens-eval judge import` writes only what the weekly run can read
# ---------------------------------------------------------------------------------------------
def _ls_export(labels: list[tuple[dict, str]]) -> list[dict]:
    """One task (q1 r:a.py:1-3) annotated by each (completed_by, grade)."""
    data = {"qid": "q1", "docno": "r:a.py:1-3", "repo": "r", "path": "a.py", "start_line": 1, "end_line": 3}
    anns = [
        {
            "id": 10 + i,
            "completed_by": who,
            "result": [{"from_name": "rel", "to_name": "code", "type": "choices", "value": {"choices": [grade]}}],
            "was_cancelled": False,
        }
        for i, (who, grade) in enumerate(labels)
    ]
    return [{"id": 1, "data": data, "annotations": anns}]


@pytest.mark.parametrize("suffix", [".parquet", ".qrels"])
def test_judge_import_refuses_annotators_who_disagree_and_writes_what_the_run_reads(tmp_path, suffix):
    import argparse
    import json

    from lens_cli.judge import cmd_import

    alice, bob = {"id": 1, "email": "alice@example.com"}, {"id": 2, "email": "bob@example.com"}
    export, out = tmp_path / "export.json", tmp_path / "judgments" / f"labels{suffix}"
    export.write_text(json.dumps(_ls_export([(alice, "3"), (bob, "1")])))
    with pytest.raises(ValueError) as err:
        cmd_import(argparse.Namespace(export=str(export), out=str(out)))
    msg = str(err.value)
    assert msg.startswith(f"{export}: 1 span(s) labelled differently by different annotators, e.g. q1 r:a.py:1-3")
    assert "human:alice@example.com=3, human:bob@example.com=1" in msg and "nothing written" in msg
    assert not out.exists() and not out.parent.exists()
    # annotators who agree: written, and the weekly run's reader takes it (the span once)
    export.write_text(json.dumps(_ls_export([(alice, "3"), (bob, "3")])))
    assert cmd_import(argparse.Namespace(export=str(export), out=str(out))) == 0
    rows = read_qrels_files([out], GRADES).select(SPAN + ["rel"]).rows()
    assert rows == [("q1", "r", "a.py", 1, 3, 3)]


def test_judge_import_refuses_labels_that_disagree_with_earlier_judgments_unless_it_replaces_them(
    tmp_path, monkeypatch
):
    """A second export whose labels contradict an earlier import would stop every weekly run:
    refused, naming the earlier label; importing over the earlier file replaces it."""
    import argparse
    import json

    from lens_cli.judge import cmd_import

    monkeypatch.setenv("LENS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LENS_QRELS", raising=False)
    alice = {"id": 1, "email": "alice@example.com"}
    first, second = tmp_path / "project-1-a.json", tmp_path / "project-1-b.json"
    first.write_text(json.dumps(_ls_export([(alice, "3")])))
    second.write_text(json.dumps(_ls_export([(alice, "1")])))
    assert cmd_import(argparse.Namespace(export=str(first), out=None)) == 0
    earlier = tmp_path / "data" / "judgments" / "project-1-a.parquet"
    assert earlier.is_file()
    with pytest.raises(ValueError) as err:
        cmd_import(argparse.Namespace(export=str(second), out=None))
    assert "disagree with labels the weekly run already reads" in str(err.value) and "rel 1 here, 3" in str(err.value)
    assert not (tmp_path / "data" / "judgments" / "project-1-b.parquet").exists()
    assert cmd_import(argparse.Namespace(export=str(second), out=str(earlier))) == 0
    assert read_qrels_files([earlier], GRADES)["rel"].to_list() == [1]
