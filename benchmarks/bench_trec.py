"""trec_eval-compatible scoring on three workload shapes (issue 19, item 4).

Whole processes, from files, against pytrec-eval-terrier as a whole process (parse the TREC
qrels and run, evaluate ndcg_cut.10 and recall.50, average), on three shapes of Q queries ×
100 hits, one system:

1. `current`: the scoring workload of `bench_scoring` (span docnos `repo:path:start-end`,
   hits in the product's Parquet: Int32 columns, row groups as written by the product).
2. `int64`: a user's Parquet: Int64 columns (rank, start_line, end_line), one row group, a
   distinct path per query (the path is prefixed by the qid); the TREC files the same.
3. `plain`: ordinary TREC docnos without spans (`DOC00131`): `lens-eval trec` only (`score`
   reads span docnos only).

Timed: `lens-eval trec -m ndcg_cut.10 -m recall.50 QRELS RUN` (TREC files; its 4-decimal
output agrees with the peer's means to 5e-5) and, on shapes 1 and 2, `lens-eval score --no-ci`
(Parquet; means agree to 1e-9). Targets: >= 5× faster than the peer, peak RSS <= half the
peer's. The three commands run interleaved (peer, trec, score; peer, trec, score; ...), so a
change of the shared machine's load falls on all of them alike; each figure is the median.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from benchmarks.common import BENCH, PY, installed_state, last_json, out_dir, row, run_proc, sub_env
from benchmarks.workloads import scoring_workload

SIZES = {"smoke": {"queries": 300, "budget_s": None}, "full": {"queries": 48_768, "budget_s": 240.0}}
PEER = BENCH / "peers" / "pytrec_eval_score.py"
HITS = 100


def _write_lines(df: pl.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    df.write_csv(tmp, include_header=False, quote_style="never", separator="\x01")
    tmp.replace(path)


def shapes(n_queries: int) -> dict[str, dict[str, Path | None]]:
    """The three shapes' files (written once under benchmarks/out/)."""
    w = scoring_workload(n_queries, HITS, n_systems=1)
    out: dict[str, dict[str, Path | None]] = {
        "current": {
            "qrels_trec": w["qrels_trec"],
            "run_trec": w["run_sys_a"],
            "hits": w["hits_1"],
            "qrels": w["qrels_parquet"],
        }
    }
    d = out_dir(f"trec_shapes_q{n_queries}_h{HITS}")
    paths = {
        "int64": {
            "qrels_trec": d / "int64_qrels.trec",
            "run_trec": d / "int64_run.trec",
            "hits": d / "int64_hits.parquet",
            "qrels": d / "int64_qrels.parquet",
        },
        "plain": {"qrels_trec": d / "plain_qrels.trec", "run_trec": d / "plain_run.trec", "hits": None, "qrels": None},
    }
    out.update(paths)
    if (d / ".done").is_file():
        return out
    # 2. Int64 columns, one row group, a distinct path per query
    hits = pl.read_parquet(w["hits_1"]).with_columns(
        pl.col("rank", "start_line", "end_line").cast(pl.Int64), (pl.col("qid") + "/" + pl.col("path")).alias("path")
    )
    qrels = pl.read_parquet(w["qrels_parquet"]).with_columns(
        pl.col("start_line", "end_line", "rel").cast(pl.Int64), (pl.col("qid") + "/" + pl.col("path")).alias("path")
    )
    hits.write_parquet(paths["int64"]["hits"], row_group_size=hits.height)
    qrels.write_parquet(paths["int64"]["qrels"], row_group_size=qrels.height)
    docno = pl.format("{}:{}:{}-{}", "repo", "path", "start_line", "end_line")
    _write_lines(
        hits.select(pl.format("{} Q0 {} {} {} {}", "qid", docno, "rank", pl.col("score").round(6), "system")),
        paths["int64"]["run_trec"],
    )
    _write_lines(qrels.select(pl.format("{} 0 {} {}", "qid", docno, "rel")), paths["int64"]["qrels_trec"])
    # 3. plain docnos: candidate j of a query (its file `mod_<j>.py`) is DOC<j>
    plain = pl.format("DOC{}", pl.col("path").str.extract(r"mod_(\d+)\.py$").str.zfill(5))
    _write_lines(
        hits.select(pl.format("{} Q0 {} {} {} {}", "qid", plain, "rank", pl.col("score").round(6), "system")),
        paths["plain"]["run_trec"],
    )
    _write_lines(qrels.select(pl.format("{} 0 {} {}", "qid", plain, "rel")), paths["plain"]["qrels_trec"])
    (d / ".done").write_text("ok")
    return out


def _trec(qrels: Path, run: Path) -> dict[str, Any]:
    res = run_proc([PY, "-m", "lens_cli", "trec", "-m", "ndcg_cut.10", "-m", "recall.50", qrels, run])
    vals = {ln.split("\t")[0].strip(): float(ln.split("\t")[2]) for ln in res["stdout"].splitlines()}
    res["means"] = {"ndcg_10": vals["ndcg_cut_10"], "recall_50": vals["recall_50"]}
    return res


def _score(hits: Path, qrels: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lens-bench-trec-") as td:
        res = run_proc([PY, "-m", "lens_cli", "score", "--hits", hits, "--qrels", qrels, "--out", td, "--no-ci"])
        pq = pl.read_parquet(Path(td) / "per_query.parquet")
    res["means"] = {"ndcg_10": pq["ndcg_10"].mean(), "recall_50": pq["recall_50"].mean()}
    return res


def _peer(qrels: Path, run: Path) -> dict[str, Any]:
    res = run_proc([PY, "-W", "ignore", PEER, qrels, run], env=sub_env(PYTHONWARNINGS="ignore"))
    res["means"] = next(iter(last_json(res["stdout"]).values()))
    return res


def _diff(a: dict, b: dict) -> float:
    return max(abs(a[m] - b[m]) for m in ("ndcg_10", "recall_50"))


def _interleaved(f: dict, repeats: int, budget: float | None) -> tuple[list, list, list]:
    """(peer, trec, score) results, `repeats` rounds of the three in turn (fewer when the
    budget is spent; score only where the shape has Parquet)."""
    import time

    r_pt: list[dict] = []
    r_tr: list[dict] = []
    r_sc: list[dict] = []
    t0 = time.perf_counter()
    for i in range(max(1, repeats)):
        if i and budget is not None and time.perf_counter() - t0 > budget:
            break
        r_pt.append(_peer(f["qrels_trec"], f["run_trec"]))
        r_tr.append(_trec(f["qrels_trec"], f["run_trec"]))
        if f["hits"] is not None:
            r_sc.append(_score(f["hits"], f["qrels"]))
    return r_pt, r_tr, r_sc


def run(size: str = "smoke", repeats: int = 3) -> dict[str, Any]:
    cfg = SIZES[size]
    budget = cfg["budget_s"]
    rows: list[dict] = []
    notes = [
        f"{cfg['queries']:,} queries × {HITS} hits, one system, tie-free scores; peer: pytrec-eval-terrier "
        "(parse TREC files, ndcg_cut.10 + recall.50, means), whole process. `lens-eval trec` reads the same "
        "TREC files; `lens-eval score --no-ci` reads the shape's Parquet."
    ]
    notes.append(installed_state())
    load = [os.getloadavg()[0]]
    med = statistics.median
    for name, f in shapes(cfg["queries"]).items():
        r_pt, r_tr, r_sc = _interleaved(f, repeats, budget)
        t_pt, t_tr = [r["wall_s"] for r in r_pt], [r["wall_s"] for r in r_tr]
        load.append(os.getloadavg()[0])
        rss_pt = max(r["rss_mb"] for r in r_pt)
        d_tr = _diff(r_tr[0]["means"], r_pt[0]["means"])
        rows.append(
            row(
                f"trec [{name}]: `lens-eval trec`, whole process",
                t_tr,
                peer_name="pytrec-eval-terrier",
                peer=t_pt,
                target=">= 5× faster",
                kind="speedup",
                threshold=5.0,
                note=f"means agree to {d_tr:.1e} (4-decimal output)",
            )
        )
        rows.append(
            row(
                f"trec [{name}]: peak RSS of `lens-eval trec`",
                [r["rss_mb"] for r in r_tr],
                unit="MB",
                target=f"<= half of pytrec_eval's {rss_pt:,.0f} MB",
                kind="max",
                threshold=rss_pt / 2,
            )
        )
        cpu_pt = [r["cpu_s"] for r in r_pt]
        rows.append(
            row(
                f"trec [{name}]: `lens-eval trec`, CPU seconds (user + sys)",
                [r["cpu_s"] for r in r_tr],
                unit="cpu s",
                peer_name="pytrec-eval-terrier",
                peer=cpu_pt,
                target="info (robust to a shared machine's load)",
                kind=None,
            )
        )
        line = (
            f"{name} (medians of {len(t_pt)}): pytrec_eval {med(t_pt):.2f} s ({med(cpu_pt):.2f} cpu s), "
            f"{med(r['rss_mb'] for r in r_pt):,.0f} MB; lens-eval trec {med(t_tr):.2f} s "
            f"({med(r['cpu_s'] for r in r_tr):.2f} cpu s), {med(r['rss_mb'] for r in r_tr):,.0f} MB, "
            f"{med(t_pt) / med(t_tr):.1f}× wall, {med(cpu_pt) / med(r['cpu_s'] for r in r_tr):.1f}× cpu "
            f"(means |diff| {d_tr:.1e})"
        )
        if r_sc:
            t_sc = [r["wall_s"] for r in r_sc]
            d_sc = _diff(r_sc[0]["means"], r_pt[0]["means"])
            rows.append(
                row(
                    f"trec [{name}]: `lens-eval score --no-ci`, whole process",
                    t_sc,
                    peer_name="pytrec-eval-terrier",
                    peer=t_pt,
                    target=">= 5× faster",
                    kind="speedup",
                    threshold=5.0,
                    note=f"means agree to {d_sc:.1e}",
                )
            )
            rows.append(
                row(
                    f"trec [{name}]: peak RSS of `lens-eval score --no-ci`",
                    [r["rss_mb"] for r in r_sc],
                    unit="MB",
                    target=f"<= half of pytrec_eval's {rss_pt:,.0f} MB",
                    kind="max",
                    threshold=rss_pt / 2,
                )
            )
            rows.append(
                row(
                    f"trec [{name}]: `lens-eval score --no-ci`, CPU seconds (user + sys)",
                    [r["cpu_s"] for r in r_sc],
                    unit="cpu s",
                    peer_name="pytrec-eval-terrier",
                    peer=cpu_pt,
                    target="info (robust to a shared machine's load)",
                    kind=None,
                )
            )
            line += (
                f"; lens-eval score --no-ci {med(t_sc):.2f} s ({med(r['cpu_s'] for r in r_sc):.2f} cpu s), "
                f"{med(r['rss_mb'] for r in r_sc):,.0f} MB, {med(t_pt) / med(t_sc):.1f}× wall, "
                f"{med(cpu_pt) / med(r['cpu_s'] for r in r_sc):.1f}× cpu"
            )
            line += f" (means |diff| {d_sc:.1e})"
        notes.append(line + ".")
    notes.append(f"1-minute load average at the start and after each shape: {', '.join(f'{x:.1f}' for x in load)}.")
    return {
        "name": "trec",
        "title": "trec_eval-compatible scoring on three shapes: lens-eval trec / score vs pytrec_eval",
        "rows": rows,
        "notes": notes,
        "profile": None,
    }


if __name__ == "__main__":
    import json
    import sys

    size, reps = (sys.argv[1] if len(sys.argv) > 1 else "smoke"), (int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    print(json.dumps(run(size, reps), indent=1, default=str))
