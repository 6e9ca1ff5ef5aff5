"""QPS@SLA: a bounded open-loop load test against one Lens endpoint (SPEC §4).

For each offered rate (ascending) the load generator sends queries on a fixed schedule
(request i at t0 + i / rate, whatever happened to earlier ones: open loop), for at most
`duration_s` seconds and `max_requests` requests. A request's latency is measured from its
*scheduled* send time to its completion, so queueing inside the client counts (no coordinated
omission). A rate passes when the p99 of its successful requests is <= `sla_ms` and the
error share is <= `max_error_rate` (failures are judged by count, not folded into p99).
QPS@SLA is the highest passing offered rate; testing stops at the first failing rate (higher
rates only saturate further) or when `max_total_s` is spent. Every loop is capped; nothing
runs unbounded. Pure module (no dagster import).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_RATES: tuple[float, ...] = (10, 20, 40, 80, 160, 320)


def _query_pairs(queries: Any) -> list[tuple[str, str]]:
    if hasattr(queries, "columns"):
        missing = [c for c in ("qid", "text") if c not in queries.columns]
        if missing:
            raise ValueError(f"qps_at_sla: query table lacks column(s) {missing}")
        pairs = [(str(a), str(b)) for a, b in queries.select(["qid", "text"]).rows()]
    else:
        pairs = [(str(a), str(b)) for a, b in queries]
    if not pairs:
        raise ValueError("qps_at_sla: no queries to send")
    return pairs


def _run_rate(
    client,
    pairs: Sequence[tuple[str, str]],
    system: str,
    rate: float,
    sla_ms: float,
    n_requests: int,
    max_inflight: int,
    start_index: int,
) -> dict[str, Any]:
    lat = np.full(n_requests, np.nan)
    err = np.zeros(n_requests, dtype=bool)
    lock = threading.Lock()

    def one(i: int, scheduled: float) -> None:
        qid, text = pairs[(start_index + i) % len(pairs)]
        try:
            res = client.search(f"load-{qid}-{start_index + i}", text, system, deadline_ms=sla_ms)
            failed = res.error is not None
        except Exception:  # a client bug must not hang the load test
            log.exception("load test request %d failed", i)
            failed = True
        done = time.monotonic()
        with lock:
            lat[i] = (done - scheduled) * 1000.0
            err[i] = failed

    pool = ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix=f"lens-load-{rate:g}")
    t0 = time.monotonic() + 0.005
    try:
        for i in range(n_requests):
            scheduled = t0 + i / rate
            pause = scheduled - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            pool.submit(one, i, scheduled)
    finally:
        pool.shutdown(wait=True)  # each request is bounded by the client's own hard cap
    span_s = max(time.monotonic() - t0, 1e-9)
    ok = ~err
    ok_lat = lat[ok]
    p99 = float(np.percentile(ok_lat, 99)) if ok_lat.size else math.nan
    row = {
        "offered_qps": float(rate),
        "sent": int(n_requests),
        "ok": int(ok.sum()),
        "errors": int(err.sum()),
        "error_rate": float(err.mean()) if n_requests else 0.0,
        "achieved_qps": float(ok.sum() / span_s),
        "p50_ms": float(np.percentile(ok_lat, 50)) if ok_lat.size else None,
        "p95_ms": float(np.percentile(ok_lat, 95)) if ok_lat.size else None,
        "p99_ms": p99 if math.isfinite(p99) else None,
        "wall_s": float(span_s),
    }
    return row


def qps_at_sla(
    client_factory: Callable[[], Any],
    queries: Any,
    system: str,
    sla_ms: float = 150,
    rates: Sequence[float] = DEFAULT_RATES,
    duration_s: float = 3.0,
    max_requests: int = 600,
    *,
    min_requests: int = 20,
    max_total_s: float = 60.0,
    max_inflight: int = 64,
    max_error_rate: float = 0.01,
    stop_on_fail: bool = True,
    warmup: int = 3,
) -> dict[str, Any]:
    """Highest offered rate whose p99 client latency is <= `sla_ms` (0.0 when none passes).

    `client_factory()` returns a `LensClient` (or anything with the same `search`); it is built
    once. Each rate sends `clamp(rate * duration_s, min_requests, max_requests)` requests.
    Returns {qps_at_sla, sla_ms, system, table: [per-rate rows], stopped, wall_s}.
    """
    if sla_ms <= 0 or max_requests <= 0 or duration_s <= 0 or max_inflight <= 0:
        raise ValueError("qps_at_sla: sla_ms, max_requests, duration_s and max_inflight must be > 0")
    rates = sorted(float(r) for r in rates)
    if not rates or rates[0] <= 0:
        raise ValueError(f"qps_at_sla: rates must be positive, got {rates}")
    pairs = _query_pairs(queries)
    client = client_factory()
    t_start = time.monotonic()
    for i in range(min(warmup, len(pairs))):  # open connections paths, warm server caches
        client.search(f"warmup-{i}", pairs[i][1], system, deadline_ms=sla_ms)
    table: list[dict[str, Any]] = []
    best = 0.0
    stopped = "all rates tested"
    next_index = 0
    for rate in rates:
        if time.monotonic() - t_start >= max_total_s:
            stopped = f"time cap {max_total_s:g} s reached before {rate:g} qps"
            break
        n = int(min(max_requests, max(min_requests, math.ceil(rate * duration_s))))
        # never schedule past the overall cap; a rate cut below min_requests is not measured
        n_fit = int((max_total_s - (time.monotonic() - t_start)) * rate)
        if n_fit < min(n, min_requests):
            stopped = f"time cap {max_total_s:g} s leaves too little time for {rate:g} qps"
            break
        n = min(n, n_fit)
        row = _run_rate(client, pairs, system, rate, sla_ms, n, max_inflight, next_index)
        next_index += n
        row["pass"] = bool(
            row["p99_ms"] is not None and row["p99_ms"] <= sla_ms and row["error_rate"] <= max_error_rate
        )
        table.append(row)
        log.info(
            "load %s @ %g qps: p99 %s ms, errors %d/%d -> %s",
            system,
            rate,
            None if row["p99_ms"] is None else round(row["p99_ms"], 2),
            row["errors"],
            row["sent"],
            "pass" if row["pass"] else "FAIL",
        )
        if row["pass"]:
            best = max(best, rate)
        elif stop_on_fail:
            stopped = f"p99 or errors over the SLA at {rate:g} qps"
            break
    return {
        "qps_at_sla": best,
        "sla_ms": float(sla_ms),
        "system": system,
        "table": table,
        "stopped": stopped,
        "wall_s": time.monotonic() - t_start,
    }
