"""The C reader of `lens-eval trec` (`lens_core/measures/_trecscan.c`, issue 19 speed): on every
file it takes, the same `Ranked` values as the general reader, to the bit; every file it
declines still read (or refused with `file:line`) by the general reader; the process imports
no polars when the C reader takes the files."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lens_cli import _POLARS_JEMALLOC, SCORE_JEMALLOC, _score_allocator
from lens_core.measures import trec
from lens_core.measures.registry import parse_measures
from lens_core.measures.trec import ScannedRun, compute, evaluate_input, load

pytest.importorskip("lens_core.measures._trecscan")  # built by setup.py (make install)

_, MEASURES = parse_measures(["all_trec", "judged.10", "ndcg_cut.10", "recall.50"])
TRICKY = ["0.1", "-0.5", "1e-3", "2.5E+2", "123456789012345678901", "0.30000000000000004", "1.7976931348623157e308"]
TRICKY += ["4.9e-324", "-0", "007", ".5", "5.", "3.141592653589793238462643383279", "9007199254740993", "1e22", "1e23"]


def _files(tmp_path: Path, seed: int, style: str) -> tuple[Path, Path]:
    """A qrels and a run whose queries lie in contiguous blocks, tie-free, in one of several
    ordinary styles (tabs, CRLF, comments, extra columns, UTF-8, blank lines, out of order)."""
    rng = random.Random(seed)
    qrels_lines, run_lines = [], []
    used: set[float] = set()
    for q in rng.sample(range(200), 40):
        qid = f"q{q}" if style != "utf8" else f"é{q}"
        pool = [f"D{rng.randint(1, 150)}" if style != "utf8" else f"doc·{rng.randint(1, 150)}" for _ in range(50)]
        pool = list(dict.fromkeys(pool))
        if rng.random() < 0.85:
            for d in pool:
                if rng.random() < 0.5:
                    qrels_lines.append((qid, d, rng.choice([-1, 0, 0, 1, 2, 3])))
        if rng.random() < 0.9:
            docs = [d for d in pool if rng.random() < 0.8]
            for i, d in enumerate(docs):
                s = round(rng.uniform(-50, 50), rng.choice([2, 6, 12]))
                while s in used:
                    s += 0.001
                used.add(s)
                run_lines.append((qid, d, i + 1, s))
    if not qrels_lines:
        qrels_lines.append(("q0", "D1", 1))
    rng.shuffle(qrels_lines)  # the qrels need no order
    if style == "reversed":  # each block out of ranking order (sorted by the reader)
        run_lines.reverse()
    sep = "\t" if style == "tabs" else " "
    end = "\r\n" if style == "crlf" else "\n"
    extra = " extra cols" if style == "extra" else ""
    q_text = "".join(f"{q}{sep}0{sep}{d}{sep}{g}{end}" for q, d, g in qrels_lines)
    r_text = "".join(f"{q}{sep}Q0{sep}{d}{sep}{r}{sep}{s!r}{sep}run-{seed}{extra}{end}" for q, d, r, s in run_lines)
    if style == "comments":
        q_text = "# a comment\n\n" + q_text.replace("\n", "\n  \n", 3)
        r_text = "  # run comment\n" + r_text + "\n# trailing\n"
    if style == "nolastnl":
        r_text = r_text.rstrip("\n")
    qp, rp = tmp_path / f"qrels_{style}", tmp_path / f"run_{style}"
    qp.write_bytes(q_text.encode())
    rp.write_bytes(r_text.encode())
    return qp, rp


def _same(a, b) -> None:
    for complete in (False, True):
        for max_docs in (None, 7):
            ra = evaluate_input(a, complete=complete, max_docs=max_docs)
            rb = evaluate_input(b, complete=complete, max_docs=max_docs)
            assert ra.qids == rb.qids and ra.runid == rb.runid
            np.testing.assert_array_equal(ra.offsets, rb.offsets)
            np.testing.assert_array_equal(ra.rel, rb.rel)
            va, vb = compute(ra, MEASURES), compute(rb, MEASURES)
            for m in MEASURES:
                np.testing.assert_array_equal(va[m], vb[m], err_msg=m.trec_name)


@pytest.mark.parametrize("style", ["plain", "tabs", "crlf", "extra", "comments", "utf8", "reversed", "nolastnl"])
@pytest.mark.parametrize("seed", [1, 2])
def test_c_reader_gives_the_general_readers_values(tmp_path, style, seed):
    qp, rp = _files(tmp_path, seed, style)
    fast, slow = load(qp, rp), load(qp, rp, fast=False)
    assert isinstance(fast.run, ScannedRun) and not isinstance(slow.run, ScannedRun)
    assert fast.runid == slow.runid == f"run-{seed}"
    _same(fast, slow)


@pytest.mark.parametrize("style", ["plain", "crlf", "comments", "utf8", "reversed", "nolastnl"])
def test_a_run_read_in_two_parts_gives_the_general_readers_values(tmp_path, monkeypatch, style):
    """Every run split in two parts (`_SCAN_SPLIT` 0), read at once: the same values as the
    general reader, whichever line the cut falls after (inside a query's block or between two)."""
    monkeypatch.setattr(trec, "_SCAN_SPLIT", 0)
    qp, rp = _files(tmp_path, 5, style)
    fast, slow = load(qp, rp), load(qp, rp, fast=False)
    assert isinstance(fast.run, ScannedRun)
    _same(fast, slow)


def _cut_files(tmp_path: Path, before: list[str], after: list[str]) -> tuple[Path, Path]:
    """A run cut by the C reader right after the lines `before` (it cuts after the first LF at or
    after the middle byte): the last line of `before` or of `after` is widened (its last field)
    until the middle byte falls in the last line of `before`; a qrels judging every docno."""
    before, after = list(before), list(after)

    def widen(lines: list[str]) -> None:
        lines[-1] = lines[-1].rstrip("\n") + "x\n"

    while True:
        head, tail = "".join(before), "".join(after)
        middle = (len(head) + len(tail)) // 2
        if middle > len(head) - 1:
            widen(before)
        elif middle < len(head) - len(before[-1]):
            widen(after)
        else:
            break
    rp, qp = tmp_path / "run", tmp_path / "qrels"
    rp.write_text(head + tail)
    docs = {(ln.split()[0], ln.split()[2]) for ln in before + after if ln.strip() and not ln.startswith("#")}
    qp.write_text("".join(f"{q} 0 {d} {i % 3}\n" for i, (q, d) in enumerate(sorted(docs))))
    return qp, rp


@pytest.mark.parametrize(
    "case, before, after, taken",
    [
        ("a query cut in two", ["a Q0 d1 1 9 r\n", "a Q0 d2 2 8 r\n"], ["a Q0 d3 3 7 r\n", "b Q0 d1 1 9 r\n"], True),
        ("between two queries", ["a Q0 d1 1 9 r\n", "a Q0 d2 2 8 r\n"], ["b Q0 d1 1 9 r\n", "b Q0 d3 2 7 r\n"], True),
        ("a docno twice across the cut", ["a Q0 d1 1 9 r\n", "a Q0 d2 2 8 r\n"], ["a Q0 d1 3 7 r\n"], False),
        ("a query in two blocks", ["a Q0 d1 1 9 r\n", "b Q0 d2 1 8 r\n"], ["a Q0 d3 1 7 r\n"], False),
        ("a tie across the cut", ["a Q0 d1 1 9 r\n", "a Q0 d2 2 8 r\n"], ["a Q0 d3 3 8 r\n"], False),
        ("out of order across the cut", ["a Q0 d1 1 9 r\n", "a Q0 d2 2 8 r\n"], ["a Q0 d3 3 8.5 r\n"], True),
        ("only comments after the cut", ["a Q0 d1 1 9 r\n", "a Q0 d2 2 8 r\n"], ["# the end\n", "\n"], True),
    ],
)
def test_the_cut_between_the_two_parts_is_invisible(tmp_path, monkeypatch, case, before, after, taken):
    """At the cut the C reader sees what one pass sees: one query's block cut in two is one block
    (its docnos checked together, its scores ordered across the cut), a query coming back after
    the cut is a query in two blocks, a tie across the cut is a tie; what it declines the general
    reader reads, or refuses naming the line."""
    monkeypatch.setattr(trec, "_SCAN_SPLIT", 0)
    qp, rp = _cut_files(tmp_path, before, after)
    got = trec._read_scanned(qp, rp)
    assert (got is not None) == taken, case
    try:
        slow = load(qp, rp, fast=False)
    except ValueError as e:  # refused: the default path names the same line
        assert not taken
        with pytest.raises(ValueError, match=str(e).split(":")[1]):
            load(qp, rp)
        return
    fast = load(qp, rp)
    assert isinstance(fast.run, ScannedRun) == taken
    _same(fast, slow)
    if taken:  # the runid is the last line's tag, whatever part it is in
        assert fast.runid == slow.runid


def test_scores_parse_as_python_floats(tmp_path):
    qp, rp = tmp_path / "q", tmp_path / "r"
    qp.write_text("".join(f"q{i} 0 d 1\n" for i in range(len(TRICKY))))
    rp.write_text("".join(f"q{i} Q0 d 1 {s} t\n" for i, s in enumerate(TRICKY)))
    got = load(qp, rp).run
    assert isinstance(got, ScannedRun)
    want = np.array([float(s) for s in TRICKY])
    assert got.score.tobytes() == want.tobytes()  # to the bit (-0.0 included)


def test_big_file_across_read_chunks(tmp_path):
    """Lines cut by the reader's 4 MiB chunks: the same values as the general reader."""
    rng = random.Random(7)
    q_lines, r_lines = [], []
    for q in range(3000):
        for j in range(40):
            if rng.random() < 0.2:
                q_lines.append(f"{q:05d} 0 repo:src/some/long/path/file_{j}.py:{j}-{j + 9} {rng.randint(0, 3)}\n")
            r_lines.append(f"{q:05d} Q0 repo:src/some/long/path/file_{j}.py:{j}-{j + 9} {j + 1} {100 - j * 1.5} r\n")
    qp, rp = tmp_path / "q", tmp_path / "r"
    qp.write_text("".join(q_lines))
    rp.write_text("".join(r_lines))
    assert rp.stat().st_size > 3 * (1 << 22) // 2
    fast, slow = load(qp, rp), load(qp, rp, fast=False)
    assert isinstance(fast.run, ScannedRun)
    _same(fast, slow)


@pytest.mark.parametrize(
    "case",
    ["tie", "two_blocks", "nan_score", "hex_score", "plus_grade"],
)
def test_declined_files_are_read_by_the_general_reader(tmp_path, case):
    qp, rp = _files(tmp_path, 3, "plain")
    lines = rp.read_text().splitlines(keepends=True)
    first = lines[0].split()
    if case == "tie":  # trec_eval breaks ties by docno: the general reader
        lines.insert(1, f"{first[0]} Q0 ZZZ 2 {first[4]} run-3\n")
    elif case == "two_blocks":
        lines.append(f"{first[0]} Q0 ZZZ 99 -1000 run-3\n")
    elif case == "hex_score":
        lines[0] = lines[0].replace(f" {first[4]} ", " 0x10 ")
    elif case == "nan_score":
        lines[0] = lines[0].replace(f" {first[4]} ", " nan ")
    rp.write_text("".join(lines))
    if case == "plus_grade":
        qp.write_text(qp.read_text().replace(" 1\n", " +1\n", 1))
    assert trec._read_scanned(qp, rp) is None
    if case == "nan_score":
        with pytest.raises(ValueError, match=rf"{rp}:1: score 'nan' is not a finite number"):
            load(qp, rp)
        return
    try:
        slow = load(qp, rp, fast=False)
    except ValueError as e:  # the general reader refuses it: so must the default path, with the same line
        with pytest.raises(ValueError, match=str(e).split(":")[1]):
            load(qp, rp)
        return
    fast = load(qp, rp)
    assert not isinstance(fast.run, ScannedRun)
    _same(fast, slow)


@pytest.mark.parametrize(
    "which, text, line, words",
    [
        ("run", b"1 Q0 d1 1 3.0 r\n1 Q0 d1 2 2.0 r\n", 2, "duplicate docs"),
        ("qrels", b"1 0 d1 1\n2 0 d1 1\n1 0 d1 0\n", 3, "duplicate docs"),
        ("run", b"1 Q0 d1 1 3.0 r\n1 Q0 d2 2 1e999 r\n", 2, "not a finite number"),
        ("run", b"1 Q0 d1 1 3.0 r\n1 Q0 d2 2.0 r\n", 2, "expected 6 fields"),
        ("run", b"1 Q0 d1 1 3.0 r\n1 Q0 d\x01 2 2.0 r\n", 2, "control byte"),
        ("run", b"1 Q0 d1 1 3.0 r\n1 Q0 d\xc3\x28 2 2.0 r\n", 2, "not UTF-8"),
        ("qrels", b"1 0 d1 1\n1 0 d2 1.5\n", 2, "not an integer grade"),
    ],
)
def test_refusals_name_the_line_as_the_general_reader(tmp_path, which, text, line, words):
    q, r = tmp_path / "q", tmp_path / "r"
    q.write_bytes(text if which == "qrels" else b"1 0 d1 1\n")
    r.write_bytes(text if which == "run" else b"1 Q0 d1 1 3.0 r\n")
    assert trec._read_scanned(q, r) is None
    bad = q if which == "qrels" else r
    with pytest.raises(ValueError, match=rf"^{bad}:{line}: .*{words}"):
        load(q, r)


def test_max_line_matches_the_validation_contract():
    from lens_core.common.validate import MAX_TREC_LINE

    assert trec._MAX_LINE == MAX_TREC_LINE


# `python -m lens_cli` and the console script `lens-eval` (pyproject: lens_cli:entry) start alike
_CONSOLE_SCRIPT = "import sys; from lens_cli import entry; sys.argv[0] = 'lens-eval'; entry()"


@pytest.mark.parametrize("launch", [["-m", "lens_cli"], ["-c", _CONSOLE_SCRIPT]], ids=["python -m", "console script"])
def test_the_trec_process_imports_no_polars(tmp_path, launch):
    qp, rp = _files(tmp_path, 1, "plain")
    p = subprocess.run(
        [sys.executable, "-X", "importtime", *launch, "trec", "-m", "ndcg_cut.10", str(qp), str(rp)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    assert "ndcg_cut_10" in p.stdout
    imported = {ln.split("|")[-1].strip() for ln in p.stderr.splitlines() if ln.startswith("import time:")}
    assert "numpy" in imported and "polars" not in imported and "lens_cli.main" not in imported


def test_without_the_extension_the_polars_readers_give_the_same_values(tmp_path, monkeypatch):
    qp, rp = _files(tmp_path, 4, "plain")
    with_c = load(qp, rp)
    monkeypatch.setattr(trec, "_trecscan", None)  # as built without a C compiler
    without = load(qp, rp)
    assert isinstance(with_c.run, ScannedRun) and isinstance(without.run, trec.FastRun)
    _same(with_c, without)


def test_the_console_script_is_the_shared_entry_and_score_sets_its_allocator():
    import tomllib

    repo = Path(__file__).resolve().parents[1]
    scripts = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lens-eval"] == "lens_cli:entry"
    code = (
        "import os, sys; sys.argv = ['lens-eval', 'score', '--help']; from lens_cli import entry\n"
        "try:\n    entry()\nexcept SystemExit:\n    pass\n"
        "print(os.environ.get('_RJEM_MALLOC_CONF'), os.environ.get('OPENBLAS_NUM_THREADS'), os.environ.get('POLARS_THP'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("_RJEM_MALLOC_CONF", "OPENBLAS_NUM_THREADS", "POLARS_THP")}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, env=env, check=True)
    # polars puts its own defaults first (dirty 500 ms, muzzy 1 s; with POLARS_THP=1, its huge
    # pages settings); jemalloc takes the last value
    conf, blas, thp = p.stdout.splitlines()[-1].split()
    assert conf.endswith(",thp:always,metadata_thp:always,dirty_decay_ms:100,muzzy_decay_ms:0,narenas:1"), conf
    assert (blas, thp) == ("1", "1")
    # a user's own settings are kept
    env.update(POLARS_THP="0", _RJEM_MALLOC_CONF="narenas:4")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, env=env, check=True)
    conf, blas, thp = p.stdout.splitlines()[-1].split()
    assert conf.endswith("muzzy_decay_ms:1000,narenas:4") and "thp" not in conf and thp == "0", conf
    # launched by a Python process that had imported polars: polars' defaults, which it wrote into
    # that process's environment, are not a user's choice; the score settings apply (issue 19: the
    # benchmark harness imports polars, and measured polars' defaults until this was seen)
    parent = (
        "import os, subprocess, sys; import polars\n"
        "env = {k: v for k, v in os.environ.items() if k not in ('POLARS_THP', 'OPENBLAS_NUM_THREADS')}\n"
        "print(os.environ['_RJEM_MALLOC_CONF']); sys.stdout.flush()\n"
        "subprocess.run([sys.executable, '-c', sys.argv[1]], env=env, check=True)"
    )
    env.pop("POLARS_THP")
    env.pop("_RJEM_MALLOC_CONF")
    p = subprocess.run(
        [sys.executable, "-c", parent, code], capture_output=True, text=True, cwd=repo, env=env, check=True
    )
    written, child = p.stdout.splitlines()[0], p.stdout.splitlines()[-1]
    assert written.startswith(_POLARS_JEMALLOC[0]), written  # what this polars writes: a new version changes it here
    conf, blas, thp = child.split()
    assert conf.endswith(",thp:always,metadata_thp:always,dirty_decay_ms:100,muzzy_decay_ms:0,narenas:1"), conf


def test_score_keeps_what_a_user_set_before_polars_wrote_its_defaults():
    base, thp = _POLARS_JEMALLOC
    assert _score_allocator(None) == SCORE_JEMALLOC
    assert _score_allocator("narenas:4") == "narenas:4"  # the user's own, whole
    assert _score_allocator(base) == SCORE_JEMALLOC
    assert _score_allocator(base + thp) == SCORE_JEMALLOC
    assert _score_allocator(f"{base}{thp},narenas:4") == f"{SCORE_JEMALLOC},narenas:4"
    assert _score_allocator(f"{base},dirty_decay_ms:0") == f"{SCORE_JEMALLOC},dirty_decay_ms:0"
