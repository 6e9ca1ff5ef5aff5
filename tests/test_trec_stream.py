"""`lens-eval score` reads a system's hits in chunks of whole queries (issue 19: bounded
memory): the per-ranking columns equal, to the bit, those of the whole read; hits whose queries
are not contiguous fall back to the whole read; the CLI's outputs are byte-identical either way."""

from __future__ import annotations

import sys

import numpy as np
import polars as pl
import pytest

from lens_core.measures import hitread as H
from lens_core.measures import metrics as M


def _case(seed: int, n_q: int = 300, shuffled: bool = False) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Hits of two systems (span docnos: overlapping spans, several spans per file, in_sla
    mixed, ranks past MAX_RANK) and qrels with relevant and non-relevant spans."""
    rng = np.random.default_rng(seed)
    hits, qrels = [], []
    for qi in range(n_q):
        q = f"q{qi:04d}"
        for _ in range(int(rng.integers(0, 14))):
            f, s = int(rng.integers(0, 8)), int(rng.integers(1, 60))
            qrels.append((q, "repo", f"f{f}.py", s, s + int(rng.integers(0, 15)), int(rng.integers(-1, 4))))
        for system in ("a", "b"):
            for rank in range(1, int(rng.integers(1, 70))):
                f, s = int(rng.integers(0, 8)), int(rng.integers(1, 60))
                hits.append(
                    (
                        "r",
                        system,
                        q,
                        rank,
                        "repo",
                        f"f{f}.py",
                        s,
                        s + int(rng.integers(0, 15)),
                        bool(rng.random() < 0.8),
                    )
                )
    h = pl.DataFrame(
        hits,
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
    if shuffled:
        h = h.sample(fraction=1.0, shuffle=True, seed=seed)
    qr = pl.DataFrame(
        qrels,
        schema={
            "qid": pl.String,
            "repo": pl.String,
            "path": pl.String,
            "start_line": pl.Int32,
            "end_line": pl.Int32,
            "rel": pl.Int32,
        },
        orient="row",
    ).unique(["qid", "repo", "path", "start_line", "end_line"], keep="first", maintain_order=True)
    return h, qr


@pytest.mark.parametrize("chunk", [1, 97, 1000, 1 << 19])
@pytest.mark.parametrize("seed", [0, 1])
def test_streamed_hit_metrics_equal_the_whole_read(tmp_path, monkeypatch, chunk, seed):
    hits, qrels = _case(seed)
    p = tmp_path / "hits.parquet"
    hits.write_parquet(p, row_group_size=777)
    whole = M.hit_metrics(hits, qrels)  # a DataFrame: read whole
    monkeypatch.setattr(H, "HIT_CHUNK_ROWS", chunk)
    calls = []
    real = M._ranking_metrics
    monkeypatch.setattr(M, "_ranking_metrics", lambda *a: calls.append(a[0].height) or real(*a))
    streamed = M.hit_metrics(pl.scan_parquet(p), qrels)
    assert streamed.equals(whole)  # same rows, same order, same bits
    if chunk < 1000:
        assert len(calls) > 2  # several chunks really were used


def test_chunks_join_batches_up_to_the_chunk_size(tmp_path, monkeypatch):
    """Small batches from the reader are joined into chunks of about HIT_CHUNK_ROWS rows (each
    cut at a query boundary): few `_ranking_metrics` calls, the same rows to the bit."""
    hits, qrels = _case(7)
    p = tmp_path / "hits.parquet"
    hits.write_parquet(p, row_group_size=300)
    whole = M.hit_metrics(hits, qrels)
    monkeypatch.setattr(H, "HIT_BATCH_ROWS", 97)
    monkeypatch.setattr(H, "HIT_CHUNK_ROWS", 2000)
    sizes = []
    real = M._ranking_metrics
    monkeypatch.setattr(M, "_ranking_metrics", lambda *a: sizes.append(a[0].height) or real(*a))
    assert M.hit_metrics(pl.scan_parquet(p), qrels).equals(whole)
    per_system = hits.filter(pl.col("rank") <= H.MAX_RANK).group_by("system").len()["len"].to_list()
    assert len(sizes) <= sum(n // 2000 + 1 for n in per_system)  # not one call per 97-row batch
    # every chunk is full (cut at most one query, < 70 hits, short) but each system's last
    assert sum(n < 2000 - 70 for n in sizes) <= len(per_system)


def test_a_read_started_ahead_gives_the_same_rows(tmp_path, monkeypatch):
    """`read_ahead` (the first system's hits decoded while the caller reads the qrels) hands
    `hit_metrics` its batches for that system only; the rows are those of the plain read, to the
    bit, whether the read-ahead names the first system, the second, or one the file lacks."""
    hits, qrels = _case(4)
    p = tmp_path / "hits.parquet"
    hits.write_parquet(p, row_group_size=500)
    monkeypatch.setattr(H, "HIT_CHUNK_ROWS", 97)
    plain = M.hit_metrics(pl.scan_parquet(p), qrels)
    systems = [("r", "a"), ("r", "b")]
    for key in [("r", "a"), ("r", "b"), ("r", "zz")]:
        ahead = H.read_ahead(pl.scan_parquet(p), *key)
        got = M.hit_metrics(pl.scan_parquet(p), qrels, systems=systems, ahead=ahead)
        assert got.equals(plain), key
        assert next(ahead.batches, None) is None  # used up by its own system (zz: has no rows)
    # a read-ahead of a system not scored is left unread, and changes nothing
    ahead = H.read_ahead(pl.scan_parquet(p), "r", "b")
    got = M.hit_metrics(pl.scan_parquet(p), qrels, systems=[("r", "a")], ahead=ahead)
    assert got.equals(plain.filter(pl.col("system") == "a"))
    assert next(ahead.batches).height > 0


def test_queries_not_contiguous_fall_back_to_the_whole_read(tmp_path, monkeypatch):
    hits, qrels = _case(3, n_q=120, shuffled=True)
    p = tmp_path / "hits.parquet"
    hits.write_parquet(p)
    monkeypatch.setattr(H, "HIT_CHUNK_ROWS", 50)
    lf = pl.scan_parquet(p).filter(pl.col("system") == "a")
    assert M._ranking_metrics_streamed(lf.select(H.HIT_COLS), *_spans(qrels)) is None
    assert (
        M.hit_metrics(pl.scan_parquet(p), qrels)
        .sort("system", "qid")
        .equals(M.hit_metrics(hits, qrels).sort("system", "qid"))
    )


def _spans(qrels: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    spans = M.relevant_spans(qrels)
    return spans, M._judged_only(qrels, spans)


def _score_files(tmp_path, seed: int, n_q: int, **write) -> tuple:
    """`_case` as the files `lens-eval score` reads: hits with the contract's other columns
    (a score falling with rank, reason flags, shard), qrels with a source."""
    hits, qrels = _case(seed, n_q=n_q)
    hp, qp = tmp_path / "hits.parquet", tmp_path / "qrels.parquet"
    hits.with_columns(
        (100.0 - pl.col("rank")).alias("score"),
        pl.lit(True).alias("why_lex"),
        pl.lit(False).alias("why_struct"),
        pl.lit(False).alias("why_sem"),
        pl.lit(0, pl.Int32).alias("shard"),
    ).write_parquet(hp, **write)
    qrels.filter(pl.col("rel") >= 0).with_columns(pl.lit("test").alias("source")).write_parquet(qp)
    return hp, qp


def test_score_cli_outputs_are_byte_identical_streamed_or_not(tmp_path, monkeypatch):
    from lens_cli.main import main

    hp, qp = _score_files(tmp_path, 5, n_q=200, row_group_size=1000)
    monkeypatch.setattr(H, "HIT_CHUNK_ROWS", 333)
    a = main(["score", "--hits", str(hp), "--qrels", str(qp), "--out", str(tmp_path / "a"), "--no-ci"])
    monkeypatch.setattr(M, "_ranking_metrics_streamed", lambda *a: None)
    b = main(["score", "--hits", str(hp), "--qrels", str(qp), "--out", str(tmp_path / "b"), "--no-ci"])
    assert a == b == 0
    assert (tmp_path / "a" / "per_query.parquet").read_bytes() == (tmp_path / "b" / "per_query.parquet").read_bytes()


@pytest.mark.parametrize("layout", ["second_system_first", "int64_columns", "one_system"])
def test_a_read_started_before_the_imports_gives_the_same_files(tmp_path, monkeypatch, layout):
    """`lens-eval score` starts reading the file's first (run_id, system) before it imports the
    rest (`_first_system_ahead`): used once the statistics list that system (processed first,
    its columns cast to the contract's types), the files are those of the command without it,
    byte for byte, whichever system comes first in the file and whatever its integer types."""
    import lens_cli.main as C

    hp, qp = _score_files(tmp_path, 8, n_q=120, row_group_size=400)
    hits = pl.read_parquet(hp)
    if layout == "second_system_first":  # not the first in sorted order
        hits = pl.concat([hits.filter(pl.col("system") == "b"), hits.filter(pl.col("system") != "b")])
    elif layout == "int64_columns":
        hits = hits.with_columns(pl.col("rank", "start_line", "end_line").cast(pl.Int64))
    else:
        hits = hits.filter(pl.col("system") == "a")
    hits.write_parquet(hp, row_group_size=400)
    first = tuple(hits.select("run_id", "system").row(0))
    used = []
    real_cast = H.cast_batches
    monkeypatch.setattr(H, "cast_batches", lambda ahead, types: used.append(ahead.key) or real_cast(ahead, types))
    args = ["score", "--hits", str(hp), "--qrels", str(qp), "--no-ci", "--out"]
    assert C.main([*args, str(tmp_path / "early")]) == 0
    assert used == [first]
    monkeypatch.setattr(C, "_first_system_ahead", lambda path: None)
    assert C.main([*args, str(tmp_path / "plain")]) == 0
    assert used == [first]  # not used again: the plain command's own read-ahead
    early, plain = (tmp_path / d / "per_query.parquet" for d in ("early", "plain"))
    assert early.read_bytes() == plain.read_bytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_THP_DISABLE) is Linux's")
@pytest.mark.parametrize("systems, user_thp, off", [(1, None, 0), (2, None, 1), (2, "1", 0)])
def test_huge_pages_are_kept_for_one_system_only(tmp_path, systems, user_thp, off):
    """`lens-eval score` asks for transparent huge pages (`lens_cli.entry`) and turns them off for
    the rest of the process once the file holds more than one system (they keep the earlier
    systems' memory); huge pages the user asked for are left alone."""
    import os
    import subprocess
    from pathlib import Path

    hp, qp = _score_files(tmp_path, 10, n_q=60)
    if systems == 1:
        pl.read_parquet(hp).filter(pl.col("system") == "a").write_parquet(hp)
    assert pl.read_parquet(hp)["system"].n_unique() == systems
    args = ["lens-eval", "score", "--hits", str(hp), "--qrels", str(qp), "--out", str(tmp_path / "out"), "--no-ci"]
    code = (
        f"import ctypes, sys; sys.argv = {args!r}; from lens_cli import entry\n"
        "try:\n    entry()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('thp_disabled', ctypes.CDLL(None).prctl(42, 0, 0, 0, 0))"  # PR_GET_THP_DISABLE
    )
    env = {k: v for k, v in os.environ.items() if k != "POLARS_THP"}
    if user_thp:
        env["POLARS_THP"] = user_thp
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1]
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == f"thp_disabled {off}"


def test_no_early_read_of_what_is_not_a_hits_parquet_file(tmp_path):
    """Not a Parquet file, a Parquet file without the columns, or without rows: no early read
    (the schema guard names what is wrong, after); a hits file: its first row's system."""
    from lens_cli.main import _first_system_ahead

    hp, _ = _score_files(tmp_path, 9, n_q=20)
    ahead = _first_system_ahead(str(hp))
    assert ahead is not None and ahead.key == tuple(pl.read_parquet(hp).select("run_id", "system").row(0))
    assert next(ahead.batches).height > 0
    (tmp_path / "x.parquet").write_text("not parquet")
    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "cols.parquet")
    pl.read_parquet(hp).head(0).write_parquet(tmp_path / "empty.parquet")
    (tmp_path / "run.trec").write_text("q Q0 d 1 1.0 r\n")
    for name in ("x.parquet", "cols.parquet", "empty.parquet", "run.trec", "missing.parquet"):
        assert _first_system_ahead(str(tmp_path / name)) is None, name


def test_the_score_process_imports_no_pyarrow_compute(tmp_path):
    """`lens-eval score` on Parquet: the whole-file check, the metrics and the writer convert
    between Arrow and polars without pyarrow.compute (~50-70 ms of import, issue 19 speed)."""
    import subprocess
    import sys
    from pathlib import Path

    hp, qp = _score_files(tmp_path, 6, n_q=50)
    cmd = ["score", "--hits", str(hp), "--qrels", str(qp), "--out", str(tmp_path / "out"), "--no-ci"]
    p = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lens_cli", *cmd],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    imported = {ln.split("|")[-1].strip() for ln in p.stderr.splitlines() if ln.startswith("import time:")}
    assert "pyarrow.parquet" in imported and "pyarrow.compute" not in imported
    assert (tmp_path / "out" / "per_query.parquet").is_file()
