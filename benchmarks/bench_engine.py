"""Engine benchmark (issue 8, row 7): the reference engine `lens_engine` served on loopback,
each system (baseline, A/A arm, the hero packs' variants, the tail-taming arm) queried with
the Lens client, sequentially, a bounded number of queries each: client-side p50/p95/p99,
server lat_ms, cost (probes, cpu_ms per query). QPS@150ms (`lens_core.collect.loadtest.qps_at_sla`)
for the baseline and the tail arm. Hedging: the tail arm (engine-side shard hedging + TA/LTS
early stop) vs the baseline, and client-side hedging (`LensClient(hedge=True)`) on the
baseline: effect on p99 and on cost (probes and requests per query).

Full size: the default corpus (`LENS_CORPUS_MAX_FUNCTIONS`, 4200 functions, dense arm on),
the demo systems (`all_systems()`; `LENS_BENCH_ENGINE_GRID=full` for every grid variant),
200 queries per system. Smoke: 250 functions, no dense arm, 15 queries per system, 3 systems.
Skips with a clear row when the engine is not available.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import PY, REPO, have, out_dir, row, sub_env

SIZES = {
    "smoke": {
        "max_functions": 250,
        "dense": False,
        "queries": 15,
        "all": False,
        "rates": (5, 10),
        "duration_s": 1.0,
        "max_total_s": 6.0,
    },
    "full": {
        "max_functions": None,
        "dense": True,
        "queries": 200,
        "all": True,
        "rates": (10, 20, 40, 80, 160),
        "duration_s": 2.0,
        "max_total_s": 25.0,
    },
}
SLA_MS = 150.0
START_TIMEOUT_S = 900.0


class Server:
    def __init__(self, cache_dir: Path, max_functions: int | None, dense: bool):
        cmd = [PY, "-m", "lens_engine", "serve", "--host", "127.0.0.1", "--port", "0", "--cache-dir", str(cache_dir)]
        if max_functions is not None:
            cmd += ["--max-functions", str(max_functions)]
        if not dense:
            cmd.append("--no-dense")
        self.log = cache_dir / "serve.log"
        self._log_f = open(self.log, "wb")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log_f, env=sub_env(), cwd=str(REPO))
        lines: queue.Queue = queue.Queue()
        threading.Thread(
            target=lambda: [lines.put(ln) for ln in iter(self.proc.stdout.readline, b"")], daemon=True
        ).start()
        self.url = None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                ln = lines.get(timeout=0.5).decode().strip()
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if ln.startswith("LISTENING "):
                self.url = ln.split(" ", 1)[1]
                break
        self.start_s = time.perf_counter() - self.t0
        if self.url is None:
            self.close()
            tail = self.log.read_text(errors="replace")[-600:] if self.log.exists() else ""
            raise RuntimeError(f"engine did not start (exit {self.proc.returncode}): {tail}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_f.close()


def _queries(cache_dir: Path, max_functions: int | None, n: int):
    from lens_engine.corpus import build_corpus
    from lens_engine.suites import build_suites

    kw = {} if max_functions is None else {"max_functions": max_functions}
    corpus = build_corpus(cache_dir=cache_dir, **kw)
    q, g = build_suites(corpus)
    # the same queries for every system: a fixed, seeded sample across suites
    q = q.sample(n=min(n, q.height), seed=11, shuffle=True)
    return q, corpus, g.filter(g["qid"].is_in(q["qid"].implode()))


def _pct(x: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(x, dtype=float), p)) if x else float("nan")


def _quality(hits: list[dict], rel: set, late: bool) -> tuple[float, float]:
    """(nDCG@10, SLA-Recall@50) of one answer against its ground-truth spans (all rel 3, so
    binary gains); a late answer's hits count zero for SLA-Recall (the engine already drops
    the hits of shards past the deadline)."""
    spans = [(h["path"], h["start_line"], h["end_line"]) for h in hits]
    dcg = sum(1.0 / np.log2(i + 2) for i, sp in enumerate(spans[:10]) if sp in rel)
    idcg = sum(1.0 / np.log2(i + 2) for i in range(min(10, len(rel))))
    rec = 0.0 if late else len(set(spans[:50]) & rel) / len(rel)
    return (dcg / idcg if idcg else 0.0), rec


def _measure(client, queries, system: str, gt: dict | None = None, extra: dict | None = None) -> dict[str, Any]:
    client_ms, lat, probes, cpu, errors, hedged = [], [], [], [], 0, 0
    ndcg, rec = [], []
    req0 = client.stats["requests"] if "requests" in client.stats else 0
    for qid, text in queries.select("qid", "text").rows():
        r = client.search(qid, text, system, deadline_ms=SLA_MS, extra=extra)
        if gt is not None and qid in gt:
            n_, r_ = _quality(r.hits if not r.error else [], gt[qid], r.late or bool(r.error))
            ndcg.append(n_)
            rec.append(r_)
        if r.error:
            errors += 1
            continue
        client_ms.append(r.client_ms)
        lat.append(r.lat_ms)
        probes.append(float(r.cost.get("probes", 0)))
        cpu.append(float(r.cost.get("cpu_ms", 0.0)))
        hedged += int(r.hedged)
    n = queries.height
    return {
        "system": system,
        "n": n,
        "errors": errors,
        "p50": _pct(client_ms, 50),
        "p95": _pct(client_ms, 95),
        "p99": _pct(client_ms, 99),
        "server_p99": _pct(lat, 99),
        "probes": float(np.mean(probes)) if probes else 0.0,
        "cpu_ms": float(np.mean(cpu)) if cpu else 0.0,
        "hedged_share": hedged / max(1, n),
        "requests_per_query": (client.stats.get("requests", 0) - req0) / max(1, n),
        "ndcg10": float(np.mean(ndcg)) if ndcg else float("nan"),
        "sla_recall50": float(np.mean(rec)) if rec else float("nan"),
    }


def run(size: str = "smoke", repeats: int = 3) -> dict[str, Any]:
    cfg = SIZES[size]
    title = "Engine: the reference engine over HTTP (latency, QPS@150ms, hedging)"
    if not have("lens_engine") or not (REPO / "lens_engine" / "server.py").exists():
        return {
            "name": "engine",
            "title": title,
            "notes": [],
            "profile": None,
            "rows": [row("engine", None, skipped="engine not available (lens_engine is not importable)")],
        }
    from lens_core.collect.client import LensClient
    from lens_core.collect.loadtest import qps_at_sla
    from lens_core.common.systems import all_systems

    if size == "smoke":
        cache = out_dir("engine_smoke_cache")
    else:
        from lens_core.common.settings import cache_dir

        cache = Path(os.environ.get("LENS_BENCH_ENGINE_CACHE") or cache_dir())
        cache.mkdir(parents=True, exist_ok=True)
    grid = os.environ.get("LENS_BENCH_ENGINE_GRID") == "full"
    systems = all_systems(full_grid=grid)
    base = systems[0].name
    tail = next((s.name for s in systems if s.tail_hedge), None)
    if not cfg["all"]:
        systems = [s for s in systems if s.name in (base, tail)] + [s for s in systems if s.name not in (base, tail)][
            :1
        ]
    try:
        srv = Server(cache, cfg["max_functions"], cfg["dense"])
    except Exception as e:  # engine present but broken or too slow to start: say so, go on
        return {
            "name": "engine",
            "title": title,
            "notes": [],
            "profile": None,
            "rows": [row("engine", None, skipped=f"engine not available: {str(e)[:300]}")],
        }
    notes: list[str] = []
    rows: list[dict] = []
    try:
        queries, corpus, gt_df = _queries(cache, cfg["max_functions"], cfg["queries"])
        gt: dict[str, set] = {}
        for qid, path, a, b in gt_df.select("qid", "path", "start_line", "end_line").iter_rows():
            gt.setdefault(qid, set()).add((path, a, b))
        notes.append(
            f"Corpus: {len(corpus.units):,} functions (digest {corpus.digest[:12]}), dense arm "
            f"{'on' if cfg['dense'] else 'off'}; server ready in {srv.start_s:.1f} s "
            f"(index cache `{cache}`). {queries.height} queries per system, sequential, deadline {SLA_MS:g} ms, k = 50."
        )

        def client(hedge: bool = False) -> LensClient:
            return LensClient(srv.url, sla_ms=SLA_MS, k=50, retries=0, hedge=hedge, concurrency=1)

        warm = client()
        for qid, text in queries.head(5).select("qid", "text").rows():  # warm caches, vectors
            warm.search(qid, text, base, deadline_ms=SLA_MS)
        per_sys = []
        for s in systems:
            c = client()
            per_sys.append(_measure(c, queries, s.name, gt))
        # each retrieval arm of the baseline alone (the engine's `arms` ablation), then fused
        arm_sets = [
            ("lex", "lexical BM25 + phrase/proximity"),
            ("struct", "structural (symbols)"),
            ("lex,struct", "lexical + structural, no router"),
        ]
        if cfg["dense"]:
            arm_sets.append(("sem", "dense MiniLM + HNSW (every shard)"))
        per_arm = []
        for arms, label in arm_sets:
            r = _measure(client(), queries, base, gt, extra={"arms": arms})
            r["system"] = f"arm {arms}: {label}"
            per_arm.append(r)
        hedged = _measure(client(hedge=True), queries, base)
        hedged["system"] = f"{base} + client hedge"
        res = {r["system"]: r for r in per_sys}
        b, t = res[base], res.get(tail) if tail else None
        rows.append(row(f"engine {base}: client p99", [b["p99"]], unit="ms", target="info"))
        if t:
            rows.append(
                row(
                    f"engine {tail} (shard hedge + TA/LTS stop): p99 vs baseline",
                    [t["p99"]],
                    unit="ms",
                    peer_name=f"{base} p99",
                    peer=[b["p99"]],
                    target="info (SPEC: p99 −10%)",
                )
            )
        rows.append(
            row(
                f"engine {base} + client hedging: p99 vs baseline",
                [hedged["p99"]],
                unit="ms",
                peer_name=f"{base} p99",
                peer=[b["p99"]],
                target="info",
            )
        )
        qps_rows = []
        for name in [n for n in (base, tail) if n]:
            q = qps_at_sla(
                client,
                queries,
                name,
                sla_ms=SLA_MS,
                rates=cfg["rates"],
                duration_s=cfg["duration_s"],
                max_requests=400,
                max_total_s=cfg["max_total_s"],
                max_inflight=16,
            )
            qps_rows.append(q)
            rows.append(row(f"engine {name}: QPS@{SLA_MS:g}ms", [q["qps_at_sla"]], unit="qps", target="info"))
        lines = [
            "| system | p50 ms | p95 ms | p99 ms | server p99 ms | probes/q | cpu ms/q | requests/q | hedged | errors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in per_sys + [hedged]:
            lines.append(
                f"| {r['system']} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | {r['server_p99']:.1f} | "
                f"{r['probes']:.2f} | {r['cpu_ms']:.1f} | {r['requests_per_query']:.2f} | "
                f"{r['hedged_share']:.0%} | {r['errors']} |"
            )
        notes.append("Per system (client-side latency includes HTTP on loopback):\n\n" + "\n".join(lines))
        qlines = [
            "| system or arm | nDCG@10 | SLA-Recall@50 | p50 ms | p95 ms | p99 ms | probes/q |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in per_arm + per_sys:
            qlines.append(
                f"| {r['system']} | {r['ndcg10']:.4f} | {r['sla_recall50']:.4f} | {r['p50']:.1f} | "
                f"{r['p95']:.1f} | {r['p99']:.1f} | {r['probes']:.2f} |"
            )
        notes.append(
            f"Quality and latency per retrieval arm (the baseline `{base}` with only those arms fused) and "
            f"per system, on the same {queries.height} queries (ground truth: the suites' spans; a late "
            "answer counts zero for SLA-Recall@50):\n\n" + "\n".join(qlines)
        )
        for r in per_arm:
            rows.append(row(f"engine {r['system'].split(':')[0]}: nDCG@10", [r["ndcg10"]], target="info"))
        if t:
            notes.append(
                f"Hedging effect, tail arm vs baseline: p99 {t['p99']:.1f} vs {b['p99']:.1f} ms "
                f"({(t['p99'] / b['p99'] - 1):+.0%}), probes/query {t['probes']:.2f} vs {b['probes']:.2f} "
                f"({(t['probes'] / max(b['probes'], 1e-9) - 1):+.0%}), cpu ms/query {t['cpu_ms']:.1f} vs {b['cpu_ms']:.1f}."
            )
        notes.append(
            f"Client hedging on the baseline: p99 {hedged['p99']:.1f} vs {b['p99']:.1f} ms; "
            f"{hedged['requests_per_query']:.2f} requests/query (hedged {hedged['hedged_share']:.0%} of queries)."
        )
        for q in qps_rows:
            notes.append(
                f"QPS@{SLA_MS:g}ms {q['system']}: {q['qps_at_sla']:g} ({q['stopped']}); rates: "
                + ", ".join(
                    f"{r['offered_qps']:g} qps p99 {r['p99_ms'] if r['p99_ms'] is None else round(r['p99_ms'], 1)} ms "
                    f"{'pass' if r['pass'] else 'FAIL'}"
                    for r in q["table"]
                )
            )
        notes.append(
            "Engine figures are single passes over the query sample (percentiles over queries), "
            "not medians of repeated runs."
        )
    finally:
        srv.close()
    return {"name": "engine", "title": title, "rows": rows, "notes": notes, "profile": None}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "smoke", 1), indent=1, default=str))
