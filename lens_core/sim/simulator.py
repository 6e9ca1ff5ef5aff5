"""A seeded simulator of Lens `/search` runs (`DATA_SOURCE=sim`): for unit tests and fast
local development. The demo and end-to-end tests use the reference engine instead.

It emits SPEC §3 raw-run records (hits, shards, cost, latency) for any list of systems over
query suites with intents and languages, plus the ground-truth spans the judge labels from.

Generative model (documented so results can be reasoned about):
- a universe of repos, files and function spans per language;
- each query has a primary relevant span (rel 3) and 0–2 secondary spans (rel 1–2) and a
  latent difficulty d ~ N(0, 1) shared by every system (so comparisons are paired);
- each system has a quality offset per intent derived from its knobs (SPEC §8), small and
  smooth, so hero-pack variants differ by realistic amounts (a few nDCG points or less);
- scores: a relevant span's hit scores N(mu_rel, 1) with mu_rel = 2.2 + offset − 0.8·d,
  distractors N(0, 1); the top k by score are returned in score order, so scores correlate
  with relevance and ranks follow scores (tie-free);
- hit spans are exact (75%), a sub-span (13%), an overlap with IoU >= 0.5 (11%) or a shifted
  span in the same file that earns only file credit (1%);
- latency: per shard log-normal (median ~18 ms) plus a Pareto straggler with probability
  3% per shard; hedging (TAIL_HEDGE) re-draws a straggler after the hedge delay, TA_STOP
  cancels the slowest shards once the top-k is safe, LTS_STOP stops waiting on a straggler;
  the query's latency is the slowest shard it waits for, hits from shards that finish after
  the SLA are not in SLA.
Same seed, same systems and queries: byte-identical output.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from lens_core.common.contracts import GROUND_TRUTH_SCHEMA, QUERIES_SCHEMA
from lens_core.common.settings import SimSpec
from lens_core.common.systems import SystemConfig

EXT = {"python": "py", "go": "go", "typescript": "ts", "rust": "rs", "java": "java", "c": "c"}
N_CANDIDATES = 160


def _seed(*parts: object) -> int:
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little")


@dataclass(frozen=True)
class SimUniverse:
    repos: list[str]
    files: pl.DataFrame  # repo, path, language, n_lines


def build_universe(spec: SimSpec, seed: int) -> SimUniverse:
    rng = np.random.default_rng(_seed(seed, "universe"))
    repos = [f"repo{r:02d}" for r in range(spec.repos)]
    rows = []
    for r, repo in enumerate(repos):
        lang = spec.languages[r % len(spec.languages)]
        for f in range(spec.files_per_repo):
            rows.append((repo, f"src/pkg{f % 7}/mod{f:03d}.{EXT.get(lang, 'txt')}", lang, int(rng.integers(120, 900))))
    files = pl.DataFrame(rows, schema=["repo", "path", "language", "n_lines"], orient="row")
    return SimUniverse(repos=repos, files=files)


def build_queries(spec: SimSpec, seed: int, universe: SimUniverse | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(queries, ground_truth) with the columns of QUERIES_SCHEMA and GROUND_TRUTH_SCHEMA."""
    universe = universe or build_universe(spec, seed)
    rng = np.random.default_rng(_seed(seed, "queries"))
    files = universe.files
    n_files = files.height
    q_rows, gt_rows = [], []
    for suite in spec.suites:
        n = max(1, int(round(spec.queries_per_suite * suite.weight)))
        for i in range(n):
            qid = f"{suite.name}-{i:05d}"
            fi = int(rng.integers(0, n_files))
            repo, path, lang, n_lines = files.row(fi)
            q_rows.append((qid, f"sim {suite.intent} query {i} about {path}", suite.name, suite.intent, lang))
            length = int(rng.integers(8, 40))
            start = int(rng.integers(1, max(2, n_lines - length)))
            gt_rows.append((qid, repo, path, start, start + length - 1, 3))
            for _ in range(int(rng.integers(0, 3))):
                fj = fi if rng.random() < 0.2 else int(rng.integers(0, n_files))
                repo2, path2, _, n2 = files.row(fj)
                ln = int(rng.integers(6, 30))
                s2 = int(rng.integers(1, max(2, n2 - ln)))
                if path2 == path and not (s2 + ln - 1 < start or s2 > start + length - 1):
                    continue  # keep relevant spans of one file disjoint
                gt_rows.append((qid, repo2, path2, s2, s2 + ln - 1, int(rng.integers(1, 3))))
    queries = pl.DataFrame(q_rows, schema=[f.name for f in QUERIES_SCHEMA], orient="row")
    gt = pl.DataFrame(gt_rows, schema=[f.name for f in GROUND_TRUTH_SCHEMA], orient="row").with_columns(
        pl.col("start_line", "end_line", "rel").cast(pl.Int32)
    )
    return queries, gt


def quality_offset(system: SystemConfig, intent: str) -> float:
    """Quality effect (in score units) of a configuration relative to the baseline."""
    lexical = (
        0.9 * (system.phrase_boost - 1.20)
        - 1.6 * (system.phrase_boost - 1.28) ** 2
        + 0.0064 * 1.6
        + 0.05 * math.log2(system.window_tokens / 16)
        - 0.04 * math.log2(system.window_tokens / 16) ** 2
        + 0.1 * (system.proximity_weight - 0.8)
    )
    router = 0.8 * (system.router_tau - 0.60) + 0.02 * (system.spend_cap_ms - 5) - 0.6 * (system.min_conf_gain - 0.04)
    ann = 0.06 * math.log2(system.ef_search / 64) + 0.04 * math.log2(system.refine_topk / 48)
    if intent in ("identifier", "structural"):
        return 1.0 * lexical + 0.2 * router + 0.2 * ann
    if intent in ("nl", "hard_nl"):
        return 0.3 * lexical + 1.0 * router + 1.0 * ann
    return 0.5 * (lexical + router + ann)


def _latency_knobs(system: SystemConfig) -> float:
    """Extra median latency (ms) the knobs cost."""
    return (
        0.6 * math.log2(system.window_tokens / 8)
        + 0.02 * (system.ef_search - 64)
        + 0.01 * (system.refine_topk - 48)
        + 0.3 * (system.spend_cap_ms - 5)
        + 2.0 * (system.router_tau - 0.60)
    )


class Simulator:
    """Seeded generator of raw-run records."""

    def __init__(self, spec: SimSpec, seed: int):
        self.spec = spec
        self.seed = seed
        self.universe = build_universe(spec, seed)
        self.queries, self.ground_truth = build_queries(spec, seed, self.universe)
        self._files = self.universe.files

    def run(
        self, system: SystemConfig, run_id: str, queries: pl.DataFrame, sla_ms: float, k: int, t0_ms: float
    ) -> list[dict]:
        """Raw-run records of one system over `queries` (each query needs ground truth)."""
        gt = self.ground_truth.filter(pl.col("qid").is_in(queries["qid"].implode()))
        gt_by_q = {q: g for (q,), g in gt.group_by(["qid"], maintain_order=True)}
        files = self._files
        n_files = files.height
        f_repo = files["repo"].to_list()
        f_path = files["path"].to_list()
        f_lines = files["n_lines"].to_numpy()
        n_shards = self.spec.shards
        records = []
        for i, q in enumerate(queries.iter_rows(named=True)):
            qid = q["qid"]
            qrng = np.random.default_rng(_seed(self.seed, "q", qid))  # shared by systems
            srng = np.random.default_rng(_seed(self.seed, "s", qid, system.name))  # per system
            d = qrng.normal()
            g = gt_by_q.get(qid)
            # Candidates: relevant spans + distractors (some in the relevant files).
            cand = []
            if g is not None:
                off = quality_offset(system, q["intent"])
                for repo, path, s, e, rel in g.select("repo", "path", "start_line", "end_line", "rel").iter_rows():
                    mu = 2.2 + off - 0.8 * d + 0.25 * (rel - 3)
                    score = srng.normal(mu, 1.0)
                    u = srng.random()
                    length = e - s + 1
                    if u < 0.75:
                        hs, he = s, e
                    elif u < 0.88:
                        hs = s + int(srng.integers(0, max(1, length // 3)))
                        he = max(hs, e - int(srng.integers(0, max(1, length // 3))))
                    elif u < 0.99:
                        shift = int(length * 0.2)
                        hs, he = s + shift, e + shift
                    else:
                        hs, he = e + 5, e + 5 + length
                    cand.append((score, repo, path, hs, he))
            dist_files = qrng.integers(0, n_files, size=N_CANDIDATES)
            dist_scores = qrng.normal(0.0, 1.0, size=N_CANDIDATES) + srng.normal(0.0, 0.35, size=N_CANDIDATES)
            dist_len = qrng.integers(6, 40, size=N_CANDIDATES)
            dist_start = (qrng.random(N_CANDIDATES) * np.maximum(f_lines[dist_files] - dist_len, 1)).astype(int) + 1
            for j in range(N_CANDIDATES):
                fi = int(dist_files[j])
                cand.append(
                    (
                        float(dist_scores[j]),
                        f_repo[fi],
                        f_path[fi],
                        int(dist_start[j]),
                        int(dist_start[j] + dist_len[j] - 1),
                    )
                )
            cand.sort(key=lambda c: (-c[0], c[2], c[3]))
            top = cand[:k]
            # Latency per shard: lognormal body + Pareto straggler; knobs shift the median.
            base = 18.0 + _latency_knobs(system) + 3.0 * max(d, 0)
            shard_ms = base * np.exp(srng.normal(0, 0.30, size=n_shards))
            strag = srng.random(n_shards) < 0.03
            strag_ms = 25.0 * (srng.pareto(1.6, size=n_shards) + 1.0)
            shard_ms = shard_ms + np.where(strag, strag_ms, 0.0)
            shards = []
            probes = n_shards
            req_ts = t0_ms + 1000.0 * i
            status = ["ok"] * n_shards
            if system.tail_hedge:
                hedge_at = min(system.hedge_delay_ms, 0.1 * base)
                redraw = base * np.exp(srng.normal(0, 0.30, size=n_shards)) + hedge_at
                hedged = shard_ms > base * 1.6
                for sh in np.flatnonzero(hedged):
                    probes += 1
                    winner = min(shard_ms[sh], redraw[sh])
                    loser_first = redraw[sh] < shard_ms[sh]
                    shards.append(
                        {
                            "shard": int(sh),
                            "probe_id": f"p-{sh}-h" if not loser_first else f"p-{sh}",
                            "issued_ts": round(req_ts + (hedge_at if not loser_first else 0.0), 3),
                            "first_byte_ts": None,
                            "done_ts": None,
                            "cancel_ts": round(req_ts + winner, 3),
                            "status": "cancelled",
                        }
                    )
                    shard_ms[sh] = winner
            if system.ta_stop or system.lts_stop:
                # Stop waiting for the slowest shards once the top-k is safe: TA cancels the
                # slowest shard when it is > 1.5× the median; LTS also the second slowest.
                order = np.argsort(-shard_ms)
                med = float(np.median(shard_ms))
                n_stop = (1 if system.ta_stop else 0) + (1 if system.lts_stop else 0)
                for sh in order[:n_stop]:
                    if shard_ms[sh] > 1.5 * med:
                        status[sh] = "cancelled"
            done_ms = {}
            for sh in range(n_shards):
                t = float(shard_ms[sh])
                st = status[sh]
                if st == "cancelled":
                    stop_at = float(np.median(shard_ms)) * 1.5
                    shards.append(
                        {
                            "shard": sh,
                            "probe_id": f"p-{sh}",
                            "issued_ts": round(req_ts, 3),
                            "first_byte_ts": round(req_ts + min(t, stop_at) * 0.3, 3),
                            "done_ts": None,
                            "cancel_ts": round(req_ts + stop_at, 3),
                            "status": "cancelled",
                        }
                    )
                    continue
                if t > 4 * sla_ms:
                    shards.append(
                        {
                            "shard": sh,
                            "probe_id": f"p-{sh}",
                            "issued_ts": round(req_ts, 3),
                            "first_byte_ts": None,
                            "done_ts": None,
                            "cancel_ts": round(req_ts + 4 * sla_ms, 3),
                            "status": "timeout",
                        }
                    )
                    continue
                done_ms[sh] = t
                shards.append(
                    {
                        "shard": sh,
                        "probe_id": f"p-{sh}",
                        "issued_ts": round(req_ts, 3),
                        "first_byte_ts": round(req_ts + t * 0.3, 3),
                        "done_ts": round(req_ts + t, 3),
                        "cancel_ts": None,
                        "status": "ok",
                    }
                )
            shards.sort(key=lambda s: (s["shard"], s["probe_id"]))
            waited = [t for t in done_ms.values()]
            cancelled_at = [float(np.median(shard_ms)) * 1.5] if any(s == "cancelled" for s in status) else []
            lat = max(waited + cancelled_at + [1.0]) + 1.5
            hits = []
            why_p = {
                "identifier": (0.95, 0.6, 0.15),
                "structural": (0.6, 0.95, 0.2),
                "nl": (0.5, 0.2, 0.8),
                "hard_nl": (0.3, 0.2, 0.9),
            }.get(q["intent"], (0.6, 0.4, 0.5))
            for rank, (score, repo, path, s, e) in enumerate(top, start=1):
                sh = int(_seed(repo, path) % n_shards)
                if sh not in done_ms:
                    continue  # cancelled or timed-out shard: its hits never arrive
                why = [r for r, p in zip(("lex", "struct", "sem"), why_p) if srng.random() < p] or ["lex"]
                hits.append(
                    {
                        "rank": len(hits) + 1,
                        "repo": repo,
                        "path": path,
                        "start_line": int(s),
                        "end_line": int(e),
                        "score": round(float(score), 6),
                        "why": why,
                        "shard": sh,
                    }
                )
            cpu = float(np.sum(np.minimum(shard_ms, lat))) * 0.35
            records.append(
                {
                    "run_id": run_id,
                    "system": system.name,
                    "cfg_hash": system.cfg_hash,
                    "qid": qid,
                    "suite": q["suite"],
                    "intent": q["intent"],
                    "language": q["language"],
                    "req_ts": round(req_ts, 3),
                    "sla_ms": float(sla_ms),
                    "lat_ms": round(lat, 3),
                    "hits": hits,
                    "shards": shards,
                    "cost": {"probes": probes, "cpu_ms": round(cpu, 3)},
                    "error": None,
                }
            )
        return records
