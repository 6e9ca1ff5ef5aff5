"""The reference engine: sharded fan-out, tail taming, router and fusion (SPEC §2, §8, §11).

A query runs in two phases.

Phase 1 (shards): the lexical and structural arms run on every shard in a thread pool. Each
shard probe records issued / first_byte / done / cancel timestamps (epoch ms) and a status.
Python on 2 cores has no natural stragglers, so a seeded straggler model (`StragglerModel`)
delays a probe, before its first byte, by a real, cooperatively cancellable sleep drawn from a
Pareto tail (20 ms scale, alpha 1.2, capped at 300 ms) with probability `p` (default 0.04, env
`LENS_ENGINE_STRAGGLER_P`, 0 disables), seeded by (seed, system name, query key, shard, probe
number): each system is its own deployment, so an A/A pair draws independent stragglers.
The coordinator then applies the system's flags to real timings:
- `tail_hedge`: a shard whose probe has been accepted by its replica but has not sent its first
  byte after min(hedge_delay_ms, 0.1 x p50 of that shard's recent probe latencies; hedge_delay_ms
  until 8 latencies are known) gets a second probe (another replica: a fresh straggler draw). A
  probe still queued on this machine (waiting for a worker thread or the GIL: an artefact of
  running every shard in one process) is not hedged, since a hedge would queue behind it; the
  check repeats every 0.5 ms. The first complete answer wins; the loser is cancelled
  (status `cancelled`, `cancel_ts`), and the shard appears twice in `shards[]`.
- `ta_stop`: threshold-algorithm stop: when, for every unanswered shard, the shard's score
  upper bound (sum over query terms of the shard's maximum term weight, times the largest
  phrase/proximity multiplier) cannot beat the k-th score held, for both the lexical and the
  structural arm, the unanswered shards are cancelled.
- `lts_stop`: learning to stop: P(stop) = sigmoid(LTS_COEF . features) with features
  (1, top-k gap, residual bound ratio, elapsed / expected shard latency, ef_search / 64) and
  the fixed coefficients `LTS_COEF`; stop when P >= 0.5, never before half the shards answered.
- `deadline_ms`: probes still running at the deadline are `timeout` and their hits dropped.

Phase 2 (router): confidence in the lexical/structural answer (`lexical_confidence`, in
[0, 1]); if confidence < router_tau and the estimated gain (router_tau − confidence) x
(1 − exp(−spend_cap_ms / expected dense ms)) >= min_conf_gain, the query is upshifted: the dense
arm searches the answered shards' HNSW graphs (ef_search, refine_topk) one by one until the
spend cap is used (what was searched is kept). Query vectors come from an in-memory cache that
`Engine.load` warms with the engine's own suite queries; an unseen query is encoded on the fly
(its cost counts in lat_ms and cpu_ms, not in the spend cap).

Fusion: weighted reciprocal rank (k0 = 60) of the arms' ranked lists; `why` lists the arms that
retrieved the hit. Scores are made strictly decreasing (tie-free) in rank order. Arm weights:
lex 1.0; struct 1.5 for a structural template, `exact_def_weight` (default 0.5) when the query
names code (`names_code`) and the structural arm's top hit is the definition of a query
identifier (`Engine.exact_definition`), else 0.5; sem 1.0.

Knobs of issue 17 (optional knobs: hashed only when not at their default; see
docs/spec_notes/issue17-planted.md):
- `exact_def_weight` (0.5): the structural arm's weight when it found the definition a code
  query names (the planted improvement runs 2.0: the definition outranks functions that merely
  mention the name).
- `struct_arm` (True): False = the structural arm is neither run nor fused (no `n=`/`c=`/`k=`
  matching, no structural confidence, no structural TA bound).
- `lex_drop_top` (False): True = the planted bug: the merged lexical list loses its best hit (an
  off-by-one slice), which also feeds the router's confidence.

Why this is one module: the reference engine's query path (lexical, structural and dense arms, shards, fusion, the tail-taming stop) is one object whose arms share the index handles.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import queue
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from lens_core.common.embeddings import embed_texts
from lens_core.common.hashing import sha256_hex
from lens_core.common.settings import cache_dir
from lens_core.common.systems import SystemConfig
from lens_engine.corpus import Corpus, build_corpus
from lens_engine.index import DEFAULT_SHARDS, EngineIndex, build_index, split_identifier, term_counts
from lens_engine.suites import build_suites
from lens_engine.text import analyze, identifiers

log = logging.getLogger(__name__)

PROX_SCALE = 0.25  # proximity multiplier = 1 + proximity_weight * PROX_SCALE * coverage
RRF_K0 = 60.0
ARM_WEIGHTS = {"lex": 1.0, "struct_template": 1.5, "struct": 0.5, "sem": 1.0}
# LTS: intercept, top-k gap, residual ratio, elapsed / expected shard latency, ef_search / 64
LTS_COEF = np.array([-4.0, 1.5, -3.0, 2.5, -0.5])
LTS_TICK_S = 0.002
HEDGE_RECHECK_S = 0.0005
# Router confidence (see lexical_confidence)
CONF_LEX_A = 1.3  # set on the dev split of the default corpus (4200 functions, Python + C++): baseline upshift 5.4% (py 6.4%, cpp 2.0%)
CONF_LEX_GAMMA = 0.5


def _now_ms() -> float:
    return time.time() * 1000.0


# ---------------------------------------------------------------------------------------------
# Straggler model
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class StragglerModel:
    """Seeded straggler delays. `primary_p` overrides p per shard for the primary probe (probe
    number 0) only: a straggling replica; a hedge goes to another replica and draws with `p`."""

    p: float = 0.04
    seed: int = 0
    scale_ms: float = 20.0
    alpha: float = 1.2
    cap_ms: float = 300.0
    primary_p: dict[int, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_env(cls) -> "StragglerModel":
        raw = os.environ.get("LENS_ENGINE_STRAGGLER_P", "0.04")
        try:
            p = float(raw)
        except ValueError:
            raise ValueError(f"LENS_ENGINE_STRAGGLER_P={raw!r}: expected a probability") from None
        if not 0 <= p <= 1:
            raise ValueError(f"LENS_ENGINE_STRAGGLER_P={raw!r}: must be in [0, 1]")
        return cls(p=p, seed=int(os.environ.get("LENS_ENGINE_STRAGGLER_SEED", "0")))

    def delay_ms(self, key: str, shard: int, probe_no: int, system: str = "") -> float:
        """The delay of one probe. `system` names the deployment that serves it: two systems
        (an A/A pair included) run on different replicas, so their straggler draws are
        independent (issue 17: with one draw per query for every system, the A/A pair saw the
        same stragglers and its noise floor was understated)."""
        p = self.primary_p.get(shard, self.p) if probe_no == 0 else self.p
        if p <= 0:
            return 0.0
        where = f"{system}:" if system else ""
        h = sha256_hex(f"{self.seed}:{where}{key}:{shard}:{probe_no}".encode())
        u1 = int(h[:13], 16) / 16**13
        u2 = int(h[13:26], 16) / 16**13
        if u1 >= p:
            return 0.0
        return float(min(self.cap_ms, self.scale_ms * (1.0 - u2) ** (-1.0 / self.alpha)))


# ---------------------------------------------------------------------------------------------
# Query plan
# ---------------------------------------------------------------------------------------------
_RE_CLASS_METHOD = re.compile(r"^\s*class\s+(\w+)\s+method\s+(\w+)\s*$", re.I)
_RE_DEF = re.compile(r"^\s*def\s+(\w+)\s*\((.*)\)\s*:?\s*$", re.I)
_RE_CALLS = re.compile(r"^\s*(?:functions?|methods?)\s+(?:that|which)\s+calls?\s+(\w+)\s*$", re.I)


def struct_query(q: str) -> tuple[dict[str, float], bool]:
    """(structural query terms with weights, whether a structural template matched)."""
    m = _RE_CLASS_METHOD.match(q)
    if m:
        return {"c=" + m.group(1).lower(): 1.0, "n=" + m.group(2).lower(): 1.0}, True
    m = _RE_DEF.match(q)
    if m:
        terms = {"n=" + m.group(1).lower(): 1.0}
        for p in m.group(2).split(","):
            p = p.split("=")[0].split(":")[0].strip().lstrip("*").lower()
            if p and p not in ("self", "cls"):
                terms["p=" + p] = 0.5
        return terms, True
    m = _RE_CALLS.match(q)
    if m:
        return {"k=" + m.group(1).lower(): 1.0}, True
    terms: dict[str, float] = {}
    for tok in identifiers(q):
        low = tok.lower()
        terms["n=" + low] = terms.get("n=" + low, 0.0) + 1.0
        terms["c=" + low] = terms.get("c=" + low, 0.0) + 0.5
        terms["k=" + low] = terms.get("k=" + low, 0.0) + 0.25
        for part in split_identifier(tok):
            terms["n:" + part] = terms.get("n:" + part, 0.0) + 0.5
            terms["c:" + part] = terms.get("c:" + part, 0.0) + 0.25
    return terms, False


_CODE_TOKEN = re.compile(r"_|[a-z][A-Z]|[A-Za-z][0-9]")


def names_code(q: str) -> bool:
    """A query that *is* code rather than a sentence mentioning it: one identifier, or only
    identifiers with `_`, camelCase or digits (`read_file`, `getHTTPResponse mimeType`)."""
    toks = identifiers(q)
    return len(toks) == 1 or bool(toks) and all(_CODE_TOKEN.search(t) for t in toks)


def code_like(q: str) -> bool:
    """A query that names code: a single identifier, or one with `_`, camelCase or digits."""
    toks = identifiers(q)
    return len(toks) == 1 or any(_CODE_TOKEN.search(t) for t in toks)


@dataclasses.dataclass
class Plan:
    k: int
    arm_k: int
    rerank_depth: int
    lex_ids: np.ndarray
    lex_qw: np.ndarray
    qseq: list[int]
    st_ids: np.ndarray
    st_qw: np.ndarray
    template: bool
    code_like: bool
    names_code: bool
    system: SystemConfig
    max_mult: float


@dataclasses.dataclass
class Probe:
    shard: int
    probe_id: str
    probe_no: int
    issued_ts: float
    issued_perf: float
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    accepted_perf: float | None = None
    first_byte_ts: float | None = None
    done_ts: float | None = None
    done_perf: float | None = None
    cancel_ts: float | None = None
    status: str = "pending"
    cpu_ms: float = 0.0
    lex: tuple[np.ndarray, np.ndarray] | None = None
    struct: tuple[np.ndarray, np.ndarray] | None = None
    error: str | None = None

    def wire(self) -> dict:
        return {
            "shard": self.shard,
            "probe_id": self.probe_id,
            "issued_ts": round(self.issued_ts, 3),
            "first_byte_ts": None if self.first_byte_ts is None else round(self.first_byte_ts, 3),
            "done_ts": None if self.done_ts is None else round(self.done_ts, 3),
            "cancel_ts": None if self.cancel_ts is None else round(self.cancel_ts, 3),
            "status": self.status,
        }


_EMPTY = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


def _top(docs: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((docs, -scores))[:n]
    return docs[order], scores[order]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------------------------
class Engine:
    def __init__(
        self,
        index: EngineIndex,
        corpus: Corpus,
        cache_dir: str | os.PathLike | None = None,
        straggler: StragglerModel | None = None,
        max_workers: int = 64,
    ):
        self.index = index
        self.corpus = corpus
        self.cache_dir = cache_dir
        self.straggler = straggler or StragglerModel.from_env()
        self.pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="lens-shard")
        self._lat_lock = threading.Lock()
        self._shard_lat = [collections.deque(maxlen=64) for _ in range(index.n_shards)]
        self._dense_ms = 1.5  # EWMA of the dense arm's time over all shards (no encoding)
        self._qvec: dict[str, np.ndarray] = {}
        self._qvec_lock = threading.Lock()
        self._probe_seq = 0

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        cache_dir: str | os.PathLike,
        n_shards: int = DEFAULT_SHARDS,
        dense: bool = True,
        warm_queries: bool = True,
        straggler: StragglerModel | None = None,
        progress=True,
        tune_switch_interval: bool = True,
        **corpus_kwargs,
    ) -> "Engine":
        """Build or load the corpus and every index (cached under cache_dir by content hash)."""
        t0 = time.monotonic()
        corpus = build_corpus(cache_dir=cache_dir, **corpus_kwargs)
        index = build_index(corpus, cache_dir, n_shards=n_shards, dense=dense, progress=progress)
        eng = cls(index, corpus, cache_dir=cache_dir, straggler=straggler)
        if tune_switch_interval:
            # Shard threads must get the GIL promptly for real per-shard timings.
            sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        if dense and warm_queries:
            queries, _ = build_suites(corpus)
            eng.warm_query_vectors(queries["text"].to_list())
        log.info(
            "engine ready: %d functions, %d shards, dense=%s (%.1fs)",
            len(corpus.units),
            n_shards,
            dense,
            time.monotonic() - t0,
        )
        return eng

    def warm_query_vectors(self, texts: list[str]) -> None:

        texts = list(dict.fromkeys(texts))
        if not texts:
            return
        vecs = embed_texts(texts, cache_dir=self.cache_dir, progress=False)
        with self._qvec_lock:
            self._qvec.update(zip(texts, vecs))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- helpers ---------------------------------------------------------------------------------
    def _query_vector(self, q: str) -> np.ndarray:
        with self._qvec_lock:
            v = self._qvec.get(q)
        if v is None:
            v = embed_texts([q], cache_dir=self.cache_dir, progress=False)[0]
            with self._qvec_lock:
                if len(self._qvec) > 100_000:
                    self._qvec.clear()
                self._qvec[q] = v
        return v

    def _hedge_after_ms(self, shard: int, hedge_delay_ms: float) -> float:
        with self._lat_lock:
            hist = list(self._shard_lat[shard])
        if len(hist) < 8:
            return hedge_delay_ms
        return min(hedge_delay_ms, 0.1 * float(np.median(hist)))

    def _expected_shard_ms(self) -> float:
        with self._lat_lock:
            allv = [x for d in self._shard_lat for x in d]
        return float(np.percentile(allv, 90)) if len(allv) >= 16 else 20.0

    def plan(self, q: str, k: int, system: SystemConfig) -> Plan:
        stream, bag = analyze(q)
        lex_ids, lex_qw = self.index.lex.query_vector(term_counts(bag))
        qseq = [self.index.lex.vocab[t] for t in stream if t in self.index.lex.vocab]
        st_terms, template = struct_query(q)
        if system.struct_arm:
            st_ids, st_qw = self.index.struct.query_vector(st_terms)
        else:  # the structural arm is off: no terms, no upper bound, no list, no confidence
            st_ids, st_qw = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        max_mult = (
            max(system.phrase_boost, 1.0) * (1.0 + max(system.proximity_weight, 0.0) * PROX_SCALE)
            if len(set(qseq)) >= 2
            else 1.0
        )
        arm_k = max(k, 10)
        return Plan(
            k=k,
            arm_k=arm_k,
            rerank_depth=max(2 * arm_k, 50),
            lex_ids=lex_ids,
            lex_qw=lex_qw,
            qseq=qseq,
            st_ids=st_ids,
            st_qw=st_qw,
            template=template,
            code_like=code_like(q),
            names_code=names_code(q),
            system=system,
            max_mult=max_mult,
        )

    # -- one shard ---------------------------------------------------------------------------------
    def _lex_shard(self, shard: int, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
        ix = self.index
        bm = ix.lex.score_shard(shard, plan.lex_ids, plan.lex_qw)
        nz = np.flatnonzero(bm > 0)
        if nz.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if nz.size > plan.rerank_depth:
            nz = nz[np.argpartition(-bm[nz], plan.rerank_depth - 1)[: plan.rerank_depth]]
        docs = ix.shard_docs[shard][nz]
        score = bm[nz].astype(np.float64)
        if len(set(plan.qseq)) >= 2:
            s = plan.system
            phrase, cover = ix.positions.proximity(docs, plan.qseq, int(s.window_tokens))
            score = score * (1.0 + (s.phrase_boost - 1.0) * phrase) * (1.0 + s.proximity_weight * PROX_SCALE * cover)
        return _top(docs.astype(np.int64), score.astype(np.float32), plan.arm_k)

    def _struct_shard(self, shard: int, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
        sc = self.index.struct.score_shard(shard, plan.st_ids, plan.st_qw)
        nz = np.flatnonzero(sc > 0)
        return _top(self.index.shard_docs[shard][nz].astype(np.int64), sc[nz], plan.arm_k)

    def _run_probe(self, probe: Probe, plan: Plan, key: str, out: queue.Queue) -> None:
        probe.accepted_perf = time.perf_counter()
        c0 = time.thread_time()
        try:
            delay = self.straggler.delay_ms(key, probe.shard, probe.probe_no, plan.system.name)
            if delay > 0 and probe.cancel.wait(delay / 1000.0):
                return
            if probe.cancel.is_set():
                return
            probe.first_byte_ts = _now_ms()
            probe.lex = self._lex_shard(probe.shard, plan)
            if probe.cancel.is_set():
                return
            probe.struct = self._struct_shard(probe.shard, plan) if plan.system.struct_arm else _EMPTY
            probe.done_perf = time.perf_counter()
            probe.done_ts = _now_ms()
        except Exception as e:  # reported as status error, never raised into the pool
            probe.error = f"{type(e).__name__}: {e}"
            log.exception("shard %d probe failed", probe.shard)
        finally:
            probe.cpu_ms = (time.thread_time() - c0) * 1000.0
            out.put(probe)

    # -- search ----------------------------------------------------------------------------------
    def search(
        self,
        q: str,
        k: int,
        system: SystemConfig,
        deadline_ms: float,
        qid: str | None = None,
        debug: bool = False,
        arms: frozenset[str] | None = None,
    ) -> Iterator[dict]:
        """Wire lines of SPEC §2: hit lines (rank 1..) then one done line. `debug` adds a
        `router` object (confidence, upshift, stopped_by) to the done line.

        `arms` (ablation; None = the system as configured): fuse only these of
        {"lex", "struct", "sem"}; with "sem" the dense arm searches every answered shard
        whatever the router and the spend cap say (the deadline still holds)."""
        if not isinstance(q, str) or not q.strip():
            raise ValueError("q: empty query")
        if not (1 <= int(k) <= 1000):
            raise ValueError(f"k={k}: expected 1..1000")
        if not deadline_ms or deadline_ms <= 0:
            raise ValueError(f"deadline_ms={deadline_ms}: must be > 0")
        k = int(k)
        only = None if arms is None else frozenset(arms)
        if only is not None and (not only or not only <= {"lex", "struct", "sem"}):
            raise ValueError(f"arms={sorted(only)}: expected a non-empty subset of lex, struct, sem")
        t0 = time.perf_counter()
        c0 = time.thread_time()
        deadline_at = t0 + deadline_ms / 1000.0
        key = qid or sha256_hex(q.encode())[:16]
        plan = self.plan(q, k, system)
        ix = self.index
        n = ix.n_shards
        ub_lex = np.array([ix.lex.upper_bound(s, plan.lex_ids, plan.lex_qw) * plan.max_mult for s in range(n)])
        ub_st = np.array([ix.struct.upper_bound(s, plan.st_ids, plan.st_qw) for s in range(n)])

        out: queue.Queue = queue.Queue()
        probes: list[Probe] = []
        by_shard: dict[int, list[Probe]] = {s: [] for s in range(n)}

        def issue(shard: int) -> None:
            self._probe_seq += 1
            p = Probe(
                shard=shard,
                probe_id=f"p-{len(probes) + 1}",
                probe_no=len(by_shard[shard]),
                issued_ts=_now_ms(),
                issued_perf=time.perf_counter(),
            )
            probes.append(p)
            by_shard[shard].append(p)
            self.pool.submit(self._run_probe, p, plan, key, out)

        for s in range(n):
            issue(s)
        hedge_at = (
            {s: by_shard[s][0].issued_perf + self._hedge_after_ms(s, system.hedge_delay_ms) / 1000.0 for s in range(n)}
            if system.tail_hedge
            else {}
        )
        pending = set(range(n))
        winners: dict[int, Probe] = {}
        stopped_by = None
        ta_skipped: list[int] = []

        def cancel_shard(shard: int, status: str) -> None:
            ts = _now_ms()
            for p in by_shard[shard]:
                if p.status == "pending":
                    p.cancel.set()
                    p.cancel_ts = ts
                    p.status = status

        while pending:
            now = time.perf_counter()
            if now >= deadline_at:
                for s in sorted(pending):
                    cancel_shard(s, "timeout")
                stopped_by = "deadline"
                break
            if system.tail_hedge:
                for s in sorted(pending):
                    if s in hedge_at and now >= hedge_at[s]:
                        first = by_shard[s][0]
                        if first.first_byte_ts is not None:
                            del hedge_at[s]
                        elif first.accepted_perf is not None:  # accepted by the replica, stalled
                            issue(s)
                            del hedge_at[s]
                        else:  # still queued on this machine: a replica would queue behind it
                            hedge_at[s] = now + HEDGE_RECHECK_S
            wake = deadline_at
            if hedge_at:
                wake = min(
                    wake,
                    min(hedge_at[s] for s in pending if s in hedge_at) if any(s in hedge_at for s in pending) else wake,
                )
            if system.lts_stop:
                wake = min(wake, now + LTS_TICK_S)
            try:
                p = out.get(timeout=max(0.0, wake - time.perf_counter()))
            except queue.Empty:
                p = None
            if p is not None:
                if p.shard in pending and p.status == "pending":
                    if p.error is None and p.done_ts is not None:
                        p.status = "ok"
                        winners[p.shard] = p
                        pending.discard(p.shard)
                        cancel_shard(p.shard, "cancelled")  # the hedge's loser, if any
                        with self._lat_lock:
                            self._shard_lat[p.shard].append((p.done_perf - p.issued_perf) * 1000.0)
                    elif p.error is not None:
                        p.status = "error"
                        if all(x.status != "pending" for x in by_shard[p.shard]):
                            pending.discard(p.shard)
                if not pending:
                    break
            if system.ta_stop and pending and self._ta_can_stop(winners, pending, plan, ub_lex, ub_st):
                ta_skipped = sorted(pending)
                for s in sorted(pending):
                    cancel_shard(s, "cancelled")
                stopped_by = "ta"
                break
            if (
                system.lts_stop
                and pending
                and len(winners) * 2 >= n
                and self._lts_stop(winners, pending, plan, ub_lex, (time.perf_counter() - t0) * 1000.0)
            ):
                for s in sorted(pending):
                    cancel_shard(s, "cancelled")
                stopped_by = "lts"
                break

        # merge phase-1 arms
        lex_list = self._merge([w.lex for w in winners.values()], max(k, 50))
        if system.lex_drop_top:  # the planted bug: an off-by-one slice loses the best lexical hit
            lex_list = (lex_list[0][1:], lex_list[1][1:])
        st_list = self._merge([w.struct for w in winners.values()], max(k, 50))
        conf = self.lexical_confidence(plan, lex_list, st_list)
        arms_out = {"lex": lex_list}
        weights = {"lex": ARM_WEIGHTS["lex"]}
        if system.struct_arm:
            arms_out["struct"] = st_list
            weights["struct"] = self.struct_weight(plan, st_list)
        dense_probes = 0
        upshift = False
        if (
            ix.dense is not None
            and conf < system.router_tau
            and time.perf_counter() < deadline_at
            and (only is None or "sem" in only)
        ):
            gain = (system.router_tau - conf) * (1.0 - math.exp(-system.spend_cap_ms / max(self._dense_ms, 1e-3)))
            if gain >= system.min_conf_gain:
                upshift = True
                qv = self._query_vector(q)
                # shards the lexical threshold stop skipped are healthy: the dense arm searches them
                live = sorted(set(winners) | (set(ta_skipped)))
                sem, dense_probes = self._dense(qv, live, system, max(k, 50), deadline_at)
                arms_out["sem"] = sem
                weights["sem"] = ARM_WEIGHTS["sem"]

        if only is not None:
            if "sem" in only and "sem" not in arms_out and ix.dense is not None and time.perf_counter() < deadline_at:
                live = sorted(set(winners) | set(ta_skipped))
                sem, dense_probes = self._dense(
                    self._query_vector(q),
                    live,
                    system.model_copy(update={"spend_cap_ms": 1e9}),
                    max(k, 50),
                    deadline_at,
                )
                arms_out["sem"] = sem
                weights["sem"] = ARM_WEIGHTS["sem"]
            arms_out = {a: v for a, v in arms_out.items() if a in only}
        hits = self._fuse(arms_out, weights, k)
        lat_ms = (time.perf_counter() - t0) * 1000.0
        cpu_ms = (time.thread_time() - c0) * 1000.0 + sum(p.cpu_ms for p in probes)
        for rank, (doc, score, why) in enumerate(hits, start=1):
            u = ix.units[doc]
            yield {
                "type": "hit",
                "rank": rank,
                "repo": u.repo,
                "path": u.path,
                "start_line": u.start_line,
                "end_line": u.end_line,
                "score": float(score),
                "why": why,
                "shard": int(ix.shard_of[doc]),
            }
        done = {
            "type": "done",
            "lat_ms": round(lat_ms, 3),
            "cfg_hash": system.cfg_hash,
            "shards": [p.wire() for p in probes],
            "cost": {"probes": len(probes) + dense_probes, "cpu_ms": round(cpu_ms, 3)},
        }
        if debug:
            done["router"] = {
                "confidence": round(conf, 4),
                "upshift": upshift,
                "stopped_by": stopped_by,
                "dense_shards": dense_probes,
            }
        yield done

    # -- stopping rules --------------------------------------------------------------------------
    def _kth(self, lists, k: int) -> tuple[float, int, float]:
        scores = np.concatenate([l[1] for l in lists if l is not None]) if lists else np.zeros(0)
        if scores.size == 0:
            return 0.0, 0, 0.0
        top = np.sort(scores)[::-1]
        kth = float(top[k - 1]) if top.size >= k else 0.0
        return kth, int(top.size), float(top[0])

    def _ta_can_stop(self, winners, pending, plan: Plan, ub_lex, ub_st) -> bool:
        kth_lex, _, _ = self._kth([w.lex for w in winners.values()], plan.k)
        kth_st, _, _ = self._kth([w.struct for w in winners.values()], plan.k)
        return all(ub_lex[s] <= kth_lex and ub_st[s] <= kth_st for s in pending)

    def lts_features(self, winners, pending, plan: Plan, ub_lex, elapsed_ms: float) -> np.ndarray:
        kth, count, top1 = self._kth([w.lex for w in winners.values()], plan.k)
        gap = (top1 - kth) / top1 if top1 > 0 else 0.0
        resid = max((ub_lex[s] for s in pending), default=0.0)
        resid_ratio = resid / (resid + kth) if resid + kth > 0 else 0.0
        return np.array(
            [1.0, gap, resid_ratio, elapsed_ms / max(self._expected_shard_ms(), 1e-3), plan.system.ef_search / 64.0]
        )

    def _lts_stop(self, winners, pending, plan: Plan, ub_lex, elapsed_ms: float) -> bool:
        x = self.lts_features(winners, pending, plan, ub_lex, elapsed_ms)
        return _sigmoid(float(LTS_COEF @ x)) >= 0.5

    # -- fusion weights --------------------------------------------------------------------------
    def exact_definition(self, plan: Plan, st_list) -> bool:
        """Whether a code-like, non-template query's top structural hit is the definition of a
        query identifier: its name (the `n=` term) equals one of the query's identifiers."""
        sdocs, _ = st_list
        if plan.template or not plan.code_like or not sdocs.size or not plan.st_ids.size:
            return False
        inv = self.index.struct.vocab.get("n=" + self.index.units[int(sdocs[0])].name.lower())
        return inv is not None and bool(np.isin(inv, plan.st_ids))

    def struct_weight(self, plan: Plan, st_list) -> float:
        """The structural arm's fusion weight: `struct_template` for a template query; the
        system's `exact_def_weight` when the arm found the definition of the identifier the
        query names (`exact_definition`); else `struct`.

        Why the exact-definition weight: for a query that names code, the lexical arm ranks
        every function that *mentions* the name (callers, wrappers, a `_name` helper's public
        twin `name`) by BM25, and a short definition is often out-scored by a long caller; the
        structural arm's `n=` field matches only the function *defined* with that name. At the
        default weight (0.5) a definition at structural rank 1 and lexical rank 2 loses to the
        lexical rank-1 caller; trusting the arm that found the definition fixes that ranking
        without touching queries where no definition matched."""
        if plan.template:
            return ARM_WEIGHTS["struct_template"]
        if (
            plan.system.exact_def_weight != ARM_WEIGHTS["struct"]
            and plan.names_code
            and self.exact_definition(plan, st_list)
        ):
            return float(plan.system.exact_def_weight)
        return ARM_WEIGHTS["struct"]

    # -- router ----------------------------------------------------------------------------------
    def lexical_confidence(self, plan: Plan, lex_list, st_list) -> float:
        """Confidence in [0, 1] that the lexical/structural answer is right.

        lexical part: c = (IDF mass of the query's terms present in the top lexical hit / the
        query's IDF mass) x (0.5 + 0.5 x (s1 − s2) / s1), mapped through
        CONF_LEX_A * c ** CONF_LEX_GAMMA (a fixed monotone scale, set once on the dev split so
        the baseline τ upshifts a minority of queries).
        structural part: share of the structural query weight the top structural hit matches
        (x 0.95) when a structural template matched; 0.9 when the query is code-like (one token,
        or a token with `_`, an inner capital or a digit) and the top structural hit's name
        equals a query identifier exactly; else 0. Confidence = the larger of the two.
        """
        lex_conf = 0.0
        docs, scores = lex_list
        if docs.size and plan.lex_ids.size:
            idf = self.index.lex_idf[plan.lex_ids] * plan.lex_qw
            row = self.index.lex.weights[int(docs[0])]
            present = np.isin(plan.lex_ids, row.indices)
            cov = float(idf[present].sum() / max(idf.sum(), 1e-9))
            gap = float((scores[0] - scores[1]) / scores[0]) if scores.size > 1 and scores[0] > 0 else 1.0
            lex_conf = CONF_LEX_A * (cov * (0.5 + 0.5 * gap)) ** CONF_LEX_GAMMA
        st_conf = 0.0
        sdocs, _ = st_list
        if sdocs.size and plan.st_ids.size:
            if plan.template:
                row = self.index.struct.weights[int(sdocs[0])]
                present = np.isin(plan.st_ids, row.indices)
                st_conf = 0.95 * float(plan.st_qw[present].sum() / max(plan.st_qw.sum(), 1e-9))
            elif self.exact_definition(plan, st_list):
                st_conf = 0.9
        return float(min(1.0, max(lex_conf, st_conf)))

    def _dense(
        self, qv: np.ndarray, shards: list[int], system: SystemConfig, n: int, deadline_at: float
    ) -> tuple[tuple[np.ndarray, np.ndarray], int]:
        dense = self.index.dense
        t0 = time.perf_counter()
        qproj = dense.project(qv)
        got, searched = [], 0
        for s in shards:
            spent_ms = (time.perf_counter() - t0) * 1000.0
            if spent_ms >= system.spend_cap_ms or time.perf_counter() >= deadline_at:
                break
            got.append(dense.search_shard(s, qv, qproj, system.ef_search, system.refine_topk, n))
            searched += 1
        spent = (time.perf_counter() - t0) * 1000.0
        if searched:
            full = spent * len(shards) / searched
            self._dense_ms = 0.9 * self._dense_ms + 0.1 * full
        return self._merge(got, n), searched

    @staticmethod
    def _merge(lists, n: int) -> tuple[np.ndarray, np.ndarray]:
        lists = [l for l in lists if l is not None and l[0].size]
        if not lists:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        docs = np.concatenate([l[0] for l in lists])
        scores = np.concatenate([l[1] for l in lists])
        return _top(docs, scores, n)

    @staticmethod
    def _fuse(arms: dict, weights: dict, k: int) -> list[tuple[int, float, list[str]]]:
        fused: dict[int, float] = {}
        why: dict[int, list[str]] = {}
        for arm in ("lex", "struct", "sem"):
            if arm not in arms:
                continue
            docs, _ = arms[arm]
            w = weights[arm]
            for r, d in enumerate(docs.tolist(), start=1):
                fused[d] = fused.get(d, 0.0) + 100.0 * w / (RRF_K0 + r)
                why.setdefault(d, []).append(arm)
        order = sorted(fused, key=lambda d: (-fused[d], d))[:k]
        out, prev = [], None
        for d in order:
            s = round(fused[d], 6)
            if prev is not None and s >= prev:
                s = round(prev - 1e-6, 6)
            out.append((d, s, why[d]))
            prev = s
        return out


def cache_dir_default() -> Path:

    return cache_dir()
