"""Held-out evaluation (SPEC §12, issue 7 item 5).

Queries: every window of the eval articles (stride 1); target = the vector of the next
sentence.

Candidate set (the protocol). The bank is the WHOLE held-out concept bank = every sentence
vector of the eval articles, de-duplicated (`ranking.Bank`; identical sentences are one
candidate). Per query, the query's own context sentences are removed from its candidate set:
they are known not to be the next sentence, and leaving them in rewards a model for echoing
its input (copy-last ranks its own input first, so its Hit@1 is 0 by construction, and every
model's Hit@K measures partly "how far from the context" instead of "how close to the next
sentence"). This is the standard rule in next-item retrieval (already-consumed items are
filtered). The target itself is never removed, even when a context sentence has the same text.
So each query ranks its target among `bank - context` candidates: `n_candidates` in
`eval_scores.parquet` is the bank size (the schema's single count), and `eval_summary.json`
gives the per-query count (`candidates_per_query`: min/median/max = bank - up to
`context_len` context sentences). Every model, the baselines included, is scored under the same
rule, and validation Hit@5 (early stopping, ridge's lambda) uses it too.

Ranking by cosine, pessimistic on ties (`ranking.target_ranks`). Hit@1/5/10 per lane and
overall (lane `all`) with percentile-bootstrap CIs over queries (`lens_core.stats.bootstrap.mean_ci`;
the same resamples for every K). Latency: the model forward on batch size 1 (numpy in -> numpy
out, device transfer included) timed for a fixed sample of queries after a warm-up,
single-threaded (torch and BLAS limited to one thread, as a batch-1 server runs; multi-threaded
batch-1 calls stall for tens of ms on a shared 2-core box); p95 in ms. NaN/Inf rate: the
share of predictions with a non-finite component (they count as misses).

Outputs under the LVM dir: `eval_scores.parquet` (exactly `LVM_EVAL_SCHEMA`),
`eval_details.npz` (per-query ranks per model, lanes, target rows: the paired bootstrap of the
registry reads it) and `eval_summary.json` (per model: checkpoint name/sha256, p95, NaN rate;
the protocol and candidate counts).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lens_core.common.contracts import LVM_EVAL_SCHEMA, SLICE_ALL
from lens_core.common.hashing import atomic_path, atomic_write_bytes, atomic_write_json, sha256_hex
from lens_core.stats.bootstrap import mean_ci
from lvm_core.models import VARIANTS
from lvm_core.ranking import hits_at
from lvm_core.sequences import Sequences
from lvm_core.train import Predictor, SplitData, build_predictor, current_checkpoint, load_checkpoint

log = logging.getLogger(__name__)


def latency_p95_ms(predictor: Predictor, contexts: np.ndarray, n: int, seed: int, warmup: int = 5) -> float:
    """p95 of the per-query forward time (batch size 1) over `n` sampled queries, in ms."""
    if contexts.shape[0] == 0 or n <= 0:
        return float("nan")
    import torch
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    idx = rng.choice(contexts.shape[0], size=min(n, contexts.shape[0]), replace=False)
    times = np.empty(idx.size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            for i in idx[:warmup]:
                predictor.predict(contexts[i : i + 1])
            for j, i in enumerate(idx):
                t0 = time.perf_counter_ns()
                predictor.predict(contexts[i : i + 1])
                times[j] = (time.perf_counter_ns() - t0) / 1e6
    finally:
        torch.set_num_threads(threads)
    return float(np.percentile(times, 95))


def score_rows(
    model: str,
    ranks: np.ndarray,
    lanes: np.ndarray,
    ks,
    n_candidates: int,
    p95_ms: float,
    b: int,
    seed: int,
    alpha: float = 0.05,
) -> list[dict]:
    """LVM_EVAL_SCHEMA rows: per lane and `all`, one row per K."""
    ks = [int(k) for k in ks]
    rows: list[dict] = []
    groups = [(SLICE_ALL, np.ones(ranks.size, dtype=bool))]
    groups += [(lane, lanes == lane) for lane in sorted(set(lanes.tolist()))]
    for lane, m in groups:
        if not m.any():
            continue
        h = hits_at(ranks[m], ks)
        mean, lo, hi = mean_ci(np.stack([h[k] for k in ks]), b=b, seed=seed, alpha=alpha)
        for i, k in enumerate(ks):
            rows.append(
                {
                    "model": model,
                    "lane": lane,
                    "k": k,
                    "hit": float(mean[i]),
                    "ci_low": float(lo[i]),
                    "ci_high": float(hi[i]),
                    "n_queries": int(m.sum()),
                    "n_candidates": int(n_candidates),
                    "p95_ms": float(p95_ms),
                }
            )
    return rows


def evaluate_predictors(
    predictors: dict[str, Predictor], data: SplitData, cfg: dict
) -> tuple[pa.Table, dict[str, np.ndarray], dict[str, dict]]:
    """Evaluate predictors on one split's queries against its bank."""
    e = cfg["eval"]
    lanes = np.asarray(data.lane)
    n_lat = min(int(e["latency_queries"]), data.start.size)
    lat_ctx = data.contexts(np.random.default_rng(int(e["seed"])).choice(data.start.size, n_lat, replace=False))
    inb = int(e.get("inbatch_size", 16))
    rows: list[dict] = []
    ranks_by: dict[str, np.ndarray] = {}
    stats: dict[str, dict] = {}
    for name, pred in predictors.items():
        t0 = time.monotonic()
        preds = data.predict(pred)
        finite = np.isfinite(preds).all(axis=1)
        ranks = data.ranks(preds)
        p95 = latency_p95_ms(pred, lat_ctx, n_lat, int(e["seed"]))
        rows += score_rows(
            name,
            ranks,
            lanes,
            e["ks"],
            data.bank.n,
            p95,
            int(e["bootstrap_b"]),
            int(e["seed"]),
            float(e.get("alpha", 0.05)),
        )
        ranks_by[name] = ranks
        stats[name] = {
            "nan_rate": float(1.0 - finite.mean()) if finite.size else 0.0,
            "p95_ms": p95,
            "n_queries": int(ranks.size),
            "inbatch": inbatch_hits(
                preds,
                data.vectors[data.target],
                inb,
                e["ks"],
                int(e["bootstrap_b"]),
                int(e["seed"]),
                float(e.get("alpha", 0.05)),
            ),
            "eval_seconds": time.monotonic() - t0,
        }
        log.info(
            "eval %s: Hit@5 %.4f p95 %.3f ms (%d queries, bank %d minus context)",
            name,
            float((ranks <= 5).mean()),
            p95,
            ranks.size,
            data.bank.n,
        )
    table = pa.Table.from_pylist(rows, schema=LVM_EVAL_SCHEMA)
    return table, ranks_by, stats


def inbatch_ranks(preds: np.ndarray, targets: np.ndarray, batch: int, seed: int) -> np.ndarray:
    """The seed trainer's measure: queries shuffled (seeded) into batches of `batch`; each
    query's target ranked by cosine among the batch's `batch` targets only (pessimistic on ties,
    NaN a miss). The last incomplete batch is dropped; returns one rank per kept query."""
    q = preds.shape[0]
    nb = q // batch
    if nb == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(q)[: nb * batch].reshape(nb, batch)
    p = np.nan_to_num(np.asarray(preds, dtype=np.float32)[order], nan=0.0, posinf=0.0, neginf=0.0)
    p /= np.maximum(np.linalg.norm(p, axis=2, keepdims=True), 1e-12)
    t = np.asarray(targets, dtype=np.float32)[order]
    scores = np.einsum("nid,njd->nij", p, t)  # (nb, batch, batch)
    true = np.einsum("nii->ni", scores)[:, :, None]
    ranks = (scores >= true).sum(axis=2).reshape(-1)
    finite = np.isfinite(np.asarray(preds)[order.reshape(-1)]).all(axis=1)
    ranks[~finite] = batch + 1
    return ranks


def inbatch_hits(
    preds: np.ndarray, targets: np.ndarray, batch: int, ks, b: int, seed: int, alpha: float = 0.05
) -> dict:
    """In-batch Hit@K (`inbatch_ranks`) with percentile-bootstrap CIs: labelled apart from the
    full-bank Hit@K, since `batch` candidates make a far easier test than the whole bank."""
    ranks = inbatch_ranks(preds, targets, batch, seed)
    out: dict = {"batch_size": int(batch), "n_queries": int(ranks.size), "candidates": int(batch)}
    if ranks.size == 0:
        return out
    ks = [int(k) for k in ks]
    h = hits_at(ranks, ks)
    mean, lo, hi = mean_ci(np.stack([h[k] for k in ks]), b=b, seed=seed, alpha=alpha)
    for i, k in enumerate(ks):
        out[f"hit{k}"] = float(mean[i])
        out[f"hit{k}_ci"] = [float(lo[i]), float(hi[i])]
    return out


def eval_set_hash(data: SplitData) -> str:
    return sha256_hex(
        np.ascontiguousarray(data.target).tobytes() + np.ascontiguousarray(data.bank.vectors[:, :8]).tobytes()
    )


def evaluate_all(
    out_dir: str | os.PathLike,
    seq: Sequences,
    vectors: np.ndarray,
    cfg: dict,
    variants=VARIANTS,
    device: str | None = None,
) -> dict:
    """Load each variant's current checkpoint (sha256 verified), evaluate, write the outputs."""
    out_dir = Path(out_dir)
    data = SplitData(seq, vectors, "eval")
    predictors: dict[str, Predictor] = {}
    ckpts: dict[str, dict] = {}
    for v in variants:
        meta = current_checkpoint(out_dir, v)
        ckpt = load_checkpoint(meta["path"], meta["sha256"])
        predictors[v] = build_predictor(ckpt, device)
        ckpts[v] = {
            "name": meta["name"],
            "checkpoint": meta["path"],
            "sha256": meta["sha256"],
            "reused": meta.get("reused", False),
            "train_seconds": meta.get("metrics", {}).get("train_seconds"),
            "device": predictors[v].device,
        }
    table, ranks_by, stats = evaluate_predictors(predictors, data, cfg)
    set_hash = eval_set_hash(data)
    with atomic_path(out_dir / "eval_scores.parquet", suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    buf = io.BytesIO()
    np.savez(
        buf,
        lanes=np.asarray(data.lane).astype(str),
        targets=data.target,
        **{f"ranks__{k}": r for k, r in ranks_by.items()},
    )
    atomic_write_bytes(out_dir / "eval_details.npz", buf.getvalue())
    per_q = data.candidate_counts()
    summary = {
        "eval_set": set_hash,
        "n_candidates": data.bank.n,
        "protocol": "whole held-out bank (de-duplicated) minus each query's own context "
        "sentences; the target is never removed",
        "candidates_per_query": {"min": int(per_q.min()), "median": float(np.median(per_q)), "max": int(per_q.max())},
        "n_queries": int(data.target.size),
        "n_eval_sentences": int(data.bank.n_rows),
        "inbatch_protocol": f"in-batch Hit@K (models.*.inbatch): eval queries shuffled into batches of "
        f"{int(cfg['eval'].get('inbatch_size', 16))}, each target ranked among its batch's targets only, as the "
        "seed's trainer measured; not comparable with the full-bank Hit@K",
        "models": {v: ckpts[v] | stats[v] for v in variants},
    }
    atomic_write_json(out_dir / "eval_summary.json", summary)
    return summary


def read_eval(out_dir: str | os.PathLike) -> tuple[pa.Table, dict, dict[str, np.ndarray]]:
    out_dir = Path(out_dir)
    p = out_dir / "eval_scores.parquet"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: missing; materialise lvm_eval_scores first")
    summary = json.loads((out_dir / "eval_summary.json").read_text())
    with np.load(out_dir / "eval_details.npz", allow_pickle=False) as z:
        details = {k: z[k] for k in z.files}
    return pq.read_table(p), summary, details


def headline(table: pa.Table, k: int = 5) -> list[dict]:
    """Lane-`all` rows at K=k, best first."""
    rows = [r for r in table.to_pylist() if r["lane"] == SLICE_ALL and r["k"] == k]
    return sorted(rows, key=lambda r: -r["hit"])
