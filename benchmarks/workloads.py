"""Seeded benchmark workloads: the product's own columns (Parquet, raw-run NDJSON, per-query
tables, labelled hits) plus TREC run/qrels files for the peers.

Scoring workload: Q queries, each with a universe of 2·H candidate spans; span j of a query
lives alone in its own file (`src/pkg<j%17>/mod_<j>.py`), so a hit earns credit only for the
exact span (span credit == trec_eval's exact docno match). Each query has 1–5 relevant spans
(rel 1–3) and 0–2 judged non-relevant ones. Each system ranks H of the 2·H candidates by a
noisy relevance score; scores are tie-free (strictly decreasing with rank, gaps >= 0.75, six
decimals in the TREC file). Docno form: `repo:path:start-end`.

Everything is written once per (size, seed) under benchmarks/out/ and reused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.common import out_dir
from lens_core.common import contracts
from lens_core.common.tables import write_parquet

SEED = 20260104
SYSTEMS = ("sys_a", "sys_b", "sys_c", "sys_d")
INTENTS = ("nl", "identifier", "structural")
LANGUAGES = ("python", "go", "typescript", "rust")
SUITES = ("codesearch_nl", "identifier_exact", "structural")


def _done(d: Path) -> bool:
    return (d / ".done").is_file()


def _mark(d: Path, meta: dict) -> None:
    (d / ".done").write_text(json.dumps(meta, sort_keys=True))


def _write_lines(lines: pl.Series, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    pl.DataFrame({"l": lines}).write_csv(tmp, include_header=False, quote_style="never")
    tmp.replace(path)


def scoring_workload(n_queries: int, n_hits: int = 100, n_systems: int = 4, seed: int = SEED) -> dict[str, Path]:
    """Write (once) and return the paths of the scoring workload:
    qrels.parquet, qrels.trec, hits_1.parquet (first system), hits_all.parquet (all systems),
    run_<system>.trec per system."""
    d = out_dir(f"scoring_q{n_queries}_h{n_hits}_s{n_systems}_seed{seed}")
    systems = SYSTEMS[:n_systems]
    paths = {
        "dir": d,
        "qrels_parquet": d / "qrels.parquet",
        "qrels_trec": d / "qrels.trec",
        "hits_1": d / "hits_1.parquet",
        "hits_all": d / "hits_all.parquet",
    }
    for s in systems:
        paths[f"run_{s}"] = d / f"run_{s}.trec"
    if _done(d):
        return paths
    rng = np.random.default_rng(seed)
    q, c = n_queries, 2 * n_hits
    qid = np.char.add("q", np.char.zfill(np.arange(q).astype(str), 6))
    repo_of_q = np.char.add("repo", (np.arange(q) % 97).astype(str))
    j = np.arange(c)
    path_of_j = np.char.add(
        np.char.add(np.char.add("src/pkg", (j % 17).astype(str)), "/mod_"), np.char.add(j.astype(str), ".py")
    )
    start_of_j = 1 + (j * 37) % 400
    end_of_j = start_of_j + 5 + j % 20

    # relevance: 1-5 relevant spans per query, rel 1-3; 0-2 judged non-relevant
    n_rel = rng.integers(1, 6, q)
    n_non = rng.integers(0, 3, q)
    pick = np.argsort(rng.random((q, c)), axis=1)[:, :7]  # distinct candidates per query
    rel = np.zeros((q, c), dtype=np.int32)
    judged = np.zeros((q, c), dtype=bool)
    rows = np.repeat(np.arange(q), 7)
    slot = np.tile(np.arange(7), q)
    cand = pick.ravel()
    is_rel = slot < n_rel[rows]
    is_non = (~is_rel) & (slot < n_rel[rows] + n_non[rows])
    rel[rows[is_rel], cand[is_rel]] = rng.integers(1, 4, int(is_rel.sum()))
    judged[rows[is_rel | is_non], cand[is_rel | is_non]] = True

    qr, qc = np.nonzero(judged)
    qrels = pl.DataFrame(
        {
            "qid": qid[qr],
            "repo": repo_of_q[qr],
            "path": path_of_j[qc],
            "start_line": start_of_j[qc].astype(np.int32),
            "end_line": end_of_j[qc].astype(np.int32),
            "rel": rel[qr, qc].astype(np.int32),
            "source": "bench",
        }
    )
    write_parquet(qrels, paths["qrels_parquet"], schema=contracts.QRELS_SCHEMA)
    docno = (
        pl.col("repo")
        + ":"
        + pl.col("path")
        + ":"
        + pl.col("start_line").cast(pl.String)
        + "-"
        + pl.col("end_line").cast(pl.String)
    )
    _write_lines(
        qrels.select(pl.col("qid") + " 0 " + docno + " " + pl.col("rel").cast(pl.String)).to_series(),
        paths["qrels_trec"],
    )

    frames = []
    for si, s in enumerate(systems):
        quality = 1.2 + 0.25 * si
        key = rel * quality + rng.gumbel(size=(q, c))
        top = np.argsort(-key, axis=1, kind="stable")[:, :n_hits]
        ranks = np.arange(1, n_hits + 1)
        score = (n_hits - ranks + 1)[None, :] + 0.25 * rng.random((q, n_hits))
        score = np.round(score, 6)
        rr = np.repeat(np.arange(q), n_hits)
        cc = top.ravel()
        in_sla = rng.random(q * n_hits) > 0.02
        frames.append(
            pl.DataFrame(
                {
                    "run_id": "bench",
                    "system": s,
                    "qid": qid[rr],
                    "rank": np.tile(ranks, q).astype(np.int32),
                    "repo": repo_of_q[rr],
                    "path": path_of_j[cc],
                    "start_line": start_of_j[cc].astype(np.int32),
                    "end_line": end_of_j[cc].astype(np.int32),
                    "score": score.ravel(),
                    "why_lex": True,
                    "why_struct": (cc % 3 == 0),
                    "why_sem": (cc % 2 == 0),
                    "shard": (cc % 8).astype(np.int32),
                    "in_sla": in_sla,
                }
            )
        )
        line = (
            pl.col("qid")
            + " Q0 "
            + docno
            + " "
            + pl.col("rank").cast(pl.String)
            + " "
            + pl.col("score").map_batches(lambda x: pl.Series(np.char.mod("%.6f", x.to_numpy())))
            + " "
            + pl.col("system")
        )
        _write_lines(frames[-1].select(line).to_series(), paths[f"run_{s}"])
    write_parquet(frames[0], paths["hits_1"], schema=contracts.HITS_SCHEMA)
    write_parquet(pl.concat(frames), paths["hits_all"], schema=contracts.HITS_SCHEMA)
    _mark(d, {"queries": q, "hits": n_hits, "systems": list(systems), "seed": seed})
    return paths


def raw_run_workload(n_queries: int, n_hits: int = 100, seed: int = SEED) -> Path:
    """The first system's hits of the scoring workload as one raw-run NDJSON file (SPEC §3),
    with shards, cost and the done trailer. Written with polars' NDJSON writer (no per-row
    Python). Returns its path."""
    sc = scoring_workload(n_queries, n_hits, seed=seed)
    d = out_dir(f"rawrun_q{n_queries}_h{n_hits}_seed{seed}")
    path = d / "bench.ndjson"
    if _done(d):
        return path
    hits = pl.read_parquet(sc["hits_1"])
    rng = np.random.default_rng(seed + 1)
    q = hits["qid"].n_unique()
    why = pl.concat_list(
        pl.when(pl.col("why_lex")).then(pl.lit(["lex"])).otherwise(pl.lit([], pl.List(pl.String))),
        pl.when(pl.col("why_struct")).then(pl.lit(["struct"])).otherwise(pl.lit([], pl.List(pl.String))),
        pl.when(pl.col("why_sem")).then(pl.lit(["sem"])).otherwise(pl.lit([], pl.List(pl.String))),
    )
    per_q = (
        hits.sort("qid", "rank")
        .with_columns(why.alias("why"))
        .group_by("qid", maintain_order=True)
        .agg(pl.struct("rank", "repo", "path", "start_line", "end_line", "score", "why", "shard").alias("hits"))
    )
    n_sh = 8
    req_ts = 1.7e12 + np.arange(q) * 10.0
    lat = rng.gamma(4.0, 8.0, q)
    issued = np.repeat(req_ts, n_sh) + rng.random(q * n_sh)
    done_ts = issued + rng.gamma(3.0, 6.0, q * n_sh)
    shards = (
        pl.DataFrame(
            {
                "_q": np.repeat(np.arange(q), n_sh),
                "shard": np.tile(np.arange(n_sh), q).astype(np.int32),
                "probe_id": np.char.add("p-", np.tile(np.arange(1, n_sh + 1), q).astype(str)),
                "issued_ts": issued,
                "first_byte_ts": issued + 0.5,
                "done_ts": done_ts,
                "cancel_ts": pl.Series([None] * (q * n_sh), dtype=pl.Float64),
                "status": "ok",
            }
        )
        .group_by("_q", maintain_order=True)
        .agg(
            pl.struct("shard", "probe_id", "issued_ts", "first_byte_ts", "done_ts", "cancel_ts", "status").alias(
                "shards"
            )
        )
    )
    rec = per_q.with_columns(
        pl.lit("bench").alias("run_id"),
        pl.lit(SYSTEMS[0]).alias("system"),
        pl.lit("0123456789abcdef").alias("cfg_hash"),
        pl.Series("suite", np.array(SUITES)[np.arange(q) % 3]),
        pl.Series("intent", np.array(INTENTS)[np.arange(q) % 3]),
        pl.Series("language", np.array(LANGUAGES)[np.arange(q) % 4]),
        pl.Series("req_ts", req_ts),
        pl.lit(150.0).alias("sla_ms"),
        pl.Series("lat_ms", lat),
        shards["shards"],
        pl.struct(pl.lit(n_sh, pl.Int32).alias("probes"), pl.Series("cpu_ms", lat * 1.5)).alias("cost"),
        pl.lit(None, pl.String).alias("error"),
    ).select(
        "run_id",
        "system",
        "cfg_hash",
        "qid",
        "suite",
        "intent",
        "language",
        "req_ts",
        "sla_ms",
        "lat_ms",
        "hits",
        "shards",
        "cost",
        "error",
    )
    tmp = path.with_suffix(".tmp")
    rec.write_ndjson(tmp)
    with open(tmp, "ab") as f:
        f.write(json.dumps({"type": "done", "records": rec.height}, separators=(",", ":")).encode() + b"\n")
    tmp.replace(path)
    _mark(d, {"queries": q, "hits": n_hits, "bytes": path.stat().st_size})
    return path


def per_query_workload(n_queries: int, n_systems: int = 4, seed: int = SEED) -> pl.DataFrame:
    """A per-query metrics table (the `compare` input) for n_systems × n_queries, with
    realistic discreteness (recall and success are stepwise, MRR is 1/rank) and system
    effects of different sizes (some pairs differ, some barely)."""
    rng = np.random.default_rng(seed + 2)
    q = n_queries
    qid = np.char.add("q", np.char.zfill(np.arange(q).astype(str), 6))
    difficulty = rng.normal(0, 1, q)
    frames = []
    for si in range(n_systems):
        eff = [0.0, 0.02, 0.05, 0.021][si % 4]
        latent = difficulty + eff * 5 + rng.normal(0, 0.8, q)
        p = 1 / (1 + np.exp(-latent))
        first = np.where(rng.random(q) < p, rng.geometric(np.clip(p, 0.05, 1)), 0)
        n_rel = rng.integers(1, 6, q)
        found = rng.binomial(n_rel, np.clip(p * 1.1, 0, 1))
        frames.append(
            pl.DataFrame(
                {
                    "run_id": "bench",
                    "system": SYSTEMS[si],
                    "qid": qid,
                    "suite": np.array(SUITES)[np.arange(q) % 3],
                    "intent": np.array(INTENTS)[np.arange(q) % 3],
                    "language": np.array(LANGUAGES)[(np.arange(q) // 3) % 4],
                    "ndcg_10": np.clip(p + rng.normal(0, 0.1, q), 0, 1) * (first > 0),
                    "recall_50": found / n_rel,
                    "sla_recall_50": np.maximum(found - (rng.random(q) < 0.05), 0) / n_rel,
                    "mrr_10": np.where((first > 0) & (first <= 10), 1.0 / np.maximum(first, 1), 0.0),
                    "success_1": (first == 1).astype(float),
                    "success_10": ((first > 0) & (first <= 10)).astype(float),
                }
            )
        )
    return pl.concat(frames)


STATS_METRICS = ("ndcg_10", "recall_50", "sla_recall_50", "mrr_10", "success_1", "success_10")


def labelled_hits(n_cells: int = 40, labels: int = 2_400_000, seed: int = SEED) -> pl.DataFrame:
    """Labelled hits for calibration: n_cells (system, intent, language) cells of equal size,
    scores rounded to 4 decimals as engines report them, P(rel | score) logistic per cell."""
    rng = np.random.default_rng(seed + 3)
    systems = [f"sys_{i}" for i in range(max(1, n_cells // 8))]
    cells = [(s, i, lang) for s in systems for i in ("nl", "identifier") for lang in LANGUAGES][:n_cells]
    per = labels // len(cells)
    frames = []
    for ci, (s, i, lang) in enumerate(cells):
        score = np.round(rng.gamma(2.0, 4.0, per), 4)
        p = 1 / (1 + np.exp(-(score - 10 - ci % 5) / 2.5))
        frames.append(
            pl.DataFrame(
                {
                    "system": s,
                    "intent": i,
                    "language": lang,
                    "qid": np.char.add(f"{ci}-", (np.arange(per) // 50).astype(str)),
                    "score": score,
                    "label": (rng.random(per) < p).astype(np.int8),
                }
            )
        )
    return pl.concat(frames)
