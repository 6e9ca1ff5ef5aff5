"""`lens-eval trec` against trec_eval's own test files (tests/data/trec_eval, trec_eval 10.0,
copied unchanged with its licence): the lines trec_eval's `make quicktest` expects, for every
measure `lens-eval trec` prints, and the input rules (comments, tabs, CRLF, extra columns,
duplicate docs, bad lines: one stderr line naming file:line, exit 2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lens_cli.main import main
from lens_core.measures.registry import ALL_TREC, FAMILIES, MeasureError, parse_measures

DATA = Path(__file__).parent / "data" / "trec_eval"


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["trec", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _name(line: str) -> str:
    return line.split("\t")[0].rstrip()


def _expected_for(expected: str, got: str) -> list[str]:
    """trec_eval's expected lines for the measures `got` prints, in trec_eval's order."""
    names = {_name(ln) for ln in got.splitlines()}
    return [ln for ln in expected.splitlines() if _name(ln) in names]


def test_default_set_is_out_test_byte_for_byte(capsys):
    code, out, _ = _run(capsys, str(DATA / "qrels.test"), str(DATA / "results.test"))
    assert code == 0
    assert out == (DATA / "out.test").read_text()


def test_qrels_with_comments_give_the_same_output(capsys):
    code, out, _ = _run(capsys, str(DATA / "qrels.test.with-comments"), str(DATA / "results.test"))
    assert code == 0
    assert out == (DATA / "out.test").read_text()


@pytest.mark.parametrize(
    "flags, qrels, run, expected",
    [
        ([], "qrels.test", "results.test", "out.test.a"),
        (["-q"], "qrels.test", "results.test", "out.test.aq"),
        (["-q", "-c"], "qrels.test", "results.trunc", "out.test.aqc"),
        (["-q", "-c", "-M", "100"], "qrels.test", "results.trunc", "out.test.aqcM"),
        (["-q", "-l", "2"], "qrels.rel_level", "results.test", "out.test.aql"),
    ],
)
def test_all_trec_matches_trec_eval_expected_output(capsys, flags, qrels, run, expected):
    code, out, _ = _run(capsys, "-m", "all_trec", *flags, str(DATA / qrels), str(DATA / run))
    assert code == 0
    want = _expected_for((DATA / expected).read_text(), out)
    assert out.splitlines() == want
    # every supported all_trec family is there (and is checked above)
    printed = {re.sub(r"_[0-9.]+$", "", _name(ln)) for ln in out.splitlines()}
    assert printed == set(ALL_TREC)
    if "-q" in flags:
        assert sum("\t301\t" in ln for ln in out.splitlines()) > 60


def test_measure_parameters_as_trec_eval_meas_params(capsys):
    code, out, _ = _run(
        capsys,
        "-q",
        "-miprec_at_recall..10,.20,.25,.75,.50",
        "-m",
        "P.5,7,3",
        "-m",
        "recall.20,2000",
        "-mndcg_cut.10,20",
        "-msuccess.2,5,20",
        str(DATA / "qrels.test"),
        str(DATA / "results.test"),
    )
    assert code == 0
    want = _expected_for((DATA / "out.test.meas_params").read_text(), out)
    assert out.splitlines() == want
    assert len(want) == 4 * 15  # 3 queries + all, 15 values each


def test_ir_measures_spellings_give_trec_eval_names(capsys):
    code, out, _ = _run(
        capsys,
        "-m",
        "nDCG@10",
        "-m",
        "P@5",
        "-m",
        "AP",
        "-m",
        "RR",
        str(DATA / "qrels.test"),
        str(DATA / "results.test"),
    )
    assert code == 0
    assert [_name(ln) for ln in out.splitlines()] == ["map", "recip_rank", "P_5", "ndcg_cut_10"]
    full = (DATA / "out.test").read_text().splitlines()
    assert [ln for ln in out.splitlines() if _name(ln) in ("map", "recip_rank", "P_5")] == [
        ln for ln in full if _name(ln) in ("map", "recip_rank", "P_5")
    ]


def test_parse_measures():
    runid, ms = parse_measures(["nDCG@10", "ndcg_cut.10", "P(rel=2)@5", "RR@10", "Judged@10", "R@50", "IPrec@0.1"])
    assert not runid
    names = [m.trec_name for m in ms]
    assert names == ["recip_rank_10", "iprec_at_recall_0.10", "P_5", "recall_50", "ndcg_cut_10", "judged_10"]
    assert [m.name for m in ms][2] == "P(rel=2)@5" and ms[2].column == "P_5_rel2"
    assert next(m for m in ms if m.family == "ndcg_cut").request == "ndcg_cut.10"
    runid, ms = parse_measures(["official"])
    assert runid and {m.family for m in ms} == {f for f in ALL_TREC[:12] if f != "runid"}
    for bad in ("nDCG@x", "bogus", "P.0", "map.5", "iprec_at_recall.1.5", "Rprec@5"):
        with pytest.raises(MeasureError):
            parse_measures([bad])
    assert all(f in FAMILIES for f in ALL_TREC if f != "runid")


def _write(p: Path, text: str | bytes) -> Path:
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


QRELS = "1 0 d1 1\n1 0 d2 0\n1 0 d3 2\n2 0 e1 1\n3 0 f1 1\n"
RUN = "1 Q0 d1 1 3.0 r\n1 Q0 d9 2 2.0 r\n1 Q0 d3 3 1.0 r\n2 Q0 e2 1 1.0 r\n4 Q0 g1 1 1.0 r\n"


def test_ordinary_files_tabs_crlf_comments_and_extra_columns(tmp_path, capsys):
    q = _write(tmp_path / "q", QRELS)
    r = _write(tmp_path / "r", RUN)
    code, base, _ = _run(capsys, "-q", "-m", "all_trec", str(q), str(r))
    assert code == 0
    q2 = _write(tmp_path / "q2", "# judged by hand\r\n" + QRELS.replace(" ", "\t").replace("\n", "\r\n"))
    r2 = _write(
        tmp_path / "r2",
        "\n".join("  " + ln.replace(" ", " \t ") + "\textra cols 7" for ln in RUN.splitlines()) + "\n# end\n\n",
    )
    code, out, _ = _run(capsys, "-q", "-m", "all_trec", str(q2), str(r2))
    assert code == 0 and out == base


def test_query_set_is_trec_evals_and_c_adds_missing_judged_queries(tmp_path, capsys):
    q = _write(tmp_path / "q", QRELS)
    r = _write(tmp_path / "r", RUN)
    _, out, _ = _run(capsys, "-q", "-m", "num_q", "-m", "map", str(q), str(r))
    qids = sorted({ln.split("\t")[1] for ln in out.splitlines()} - {"all"})
    assert qids == ["1", "2"]  # 3 is not in the run, 4 has no judgments
    assert "num_q                 \tall\t2" in out.splitlines()
    # AP(1) = (1/1 + 2/3) / 2 = 0.8333; AP(2) = 0
    assert "map                   \tall\t0.4167" in out.splitlines()
    _, out, _ = _run(capsys, "-q", "-c", "-m", "num_q", "-m", "map", str(q), str(r))
    assert "num_q                 \tall\t3" in out.splitlines()
    assert "map                   \t3\t0.0000" in out.splitlines()
    assert "map                   \tall\t0.2778" in out.splitlines()


def test_ties_break_by_docno_descending_as_strcmp(tmp_path, capsys):
    # numeric docnos: strcmp order is "10" < "9", so among tied scores "9" ranks first
    q = _write(tmp_path / "q", "1 0 10 1\n1 0 9 0\n")
    r = _write(tmp_path / "r", "1 Q0 10 1 1.0 r\n1 Q0 9 2 1.0 r\n")
    _, out, _ = _run(capsys, "-m", "recip_rank", str(q), str(r))
    assert out.splitlines() == ["recip_rank            \tall\t0.5000"]


@pytest.mark.parametrize(
    "which, text, line, words",
    [
        ("run", RUN + "1 Q0 d1 9 0.5 r\n", 6, "duplicate docs"),
        ("qrels", QRELS + "1 0 d1 0\n", 6, "duplicate docs"),
        ("run", "1 Q0 d1 1 abc r\n", 1, "not a finite number"),
        ("run", "1 Q0 d1 1 nan r\n", 1, "not a finite number"),
        ("run", "1 Q0 d1 1 1.0\n", 1, "expected 6 fields"),
        ("qrels", "1 0 d1 1\n1 0 d2 1 extra\n", 2, "more than 4 fields"),
        ("qrels", "1 0 d1 x\n", 1, "not an integer grade"),
        ("qrels", b"1 0 d1 1\n1 0 \x00 1\n", 2, "control byte"),
        ("run", b"1 Q0 d1 1 3.0 r\n1 Q0 d\x01 2 2.0 r\n", 2, "control byte"),
        ("run", b"1 Q0 d1 1 3.0 r\n1 Q0 d\xff 2 2.0 r\n", 2, "not UTF-8"),
        ("qrels", b"1 0 d1 1\n1 0 d\xfe 1\n", 2, "not UTF-8"),
    ],
)
def test_bad_input_one_line_file_line_exit_2(tmp_path, capsys, which, text, line, words):
    q = _write(tmp_path / "q", text if which == "qrels" else QRELS)
    r = _write(tmp_path / "r", text if which == "run" else RUN)
    code, out, err = _run(capsys, str(q), str(r))
    bad = q if which == "qrels" else r
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"lens-eval: error: {bad}:{line}:") and words in err


def test_bad_usage_exits_2(tmp_path, capsys):
    q = _write(tmp_path / "q", QRELS)
    r = _write(tmp_path / "r", RUN)
    code, out, err = _run(capsys, "-m", "nope", str(q), str(r))
    assert code == 2 and out == "" and "unknown measure 'nope'" in err
    code, out, err = _run(capsys, str(q), str(tmp_path / "missing"))
    assert code == 2 and out == ""
    r2 = _write(tmp_path / "r2", "9 Q0 x 1 1.0 r\n")
    code, out, err = _run(capsys, str(q), str(r2))
    assert code == 2 and "no queries with both results and relevance info" in err


def test_span_credit_on_span_docnos(tmp_path, capsys):
    q = _write(tmp_path / "q", "1 0 r:a.py:10-20 2\n1 0 r:b.py:1-5 1\n1 0 r:c.py:1-9 0\n")
    # hit 1 overlaps a.py at IoU 11/12 (credited 2), hit 2 is inside a.py (span already
    # credited: judged 0 no more), hit 3 is the judged non-relevant c.py, hit 4 is b.py
    r = _write(
        tmp_path / "r",
        "1 Q0 r:a.py:10-21 1 4 t\n1 Q0 r:a.py:12-14 2 3 t\n1 Q0 r:c.py:1-9 3 2 t\n1 Q0 r:b.py:1-5 4 1 t\n",
    )
    _, doc, _ = _run(capsys, "-m", "num_rel_ret", "-m", "P.1", str(q), str(r))
    assert "num_rel_ret           \tall\t1" in doc.splitlines()  # only the exact b.py docno
    _, span, _ = _run(capsys, "--credit", "span", "-m", "num_rel_ret", "-m", "P.1", "-m", "ndcg", str(q), str(r))
    lines = span.splitlines()
    assert "num_rel_ret           \tall\t2" in lines and "P_1                   \tall\t1.0000" in lines
    # DCG = 2/log2(2) + 1/log2(5); ideal = 2 + 1/log2(3)
    import math

    want = (2 + 1 / math.log2(5)) / (2 + 1 / math.log2(3))
    assert f"ndcg                  \tall\t{want:6.4f}" in lines
    code, _, err = _run(capsys, "--credit", "span", str(q), str(_write(tmp_path / "r2", "1 Q0 plain 1 1 t\n")))
    assert code == 2 and f"{tmp_path / 'r2'}:1:" in err and "repo:path:start-end" in err
