"""QPS@SLA: a bounded open-loop load test against Lens endpoints (SPEC §4, §8; issue 17).

For each offered rate (ascending) the load generator sends queries on a fixed schedule
(request i at t0 + i / rate, whatever happened to earlier ones: open loop), for at most
`duration_s` seconds and `max_requests` requests. A request's latency is measured from its
*scheduled* send time to its completion, so queueing inside the client counts (no coordinated
omission). A rate passes when the p99 of its successful requests is <= `sla_ms` and the
error share is <= `max_error_rate` (failures are judged by count, not folded into p99).
QPS@SLA is the highest passing offered rate; testing stops at the first failing rate (higher
rates only saturate further) or when `max_total_s` is spent. Every loop is capped; nothing
runs unbounded. Pure module (no dagster import).

Several arms in ONE load test (`load_test`, issue 17): the arms of a comparison (the baseline
and each arm with a `qps` promotion rule) are measured together, so time-dependent effects on
the endpoint land on both. At each offered rate every arm is sent that rate: the requests go
out in rounds, one request per arm per round, the arms' order in each round shuffled by a
seeded RNG (`seed`, recorded), and every arm of a round asks the same query. Each arm is judged
on its own requests. An arm stays "alive" up the grid until its first failing rate (its
QPS@SLA is its highest rate before that); the test goes on while any arm is alive. An arm that
sustains no rate of the grid gets the grid extended DOWNWARD (the lowest rate halved, down to
`min_rate`, the floor itself tested last), all arms still sent at each added rate, until every
such arm sustains one or the floor is reached; the grid actually tested is recorded. An arm
with no sustained rate reports QPS@SLA 0 with `lowest_rate`, the lowest rate tried: a Δ% from
0 is then reported as what it is by the promotion rule, never a silent fail.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Sequence

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


def _summary(rate: float, lat: np.ndarray, err: np.ndarray, span_s: float) -> dict[str, Any]:
    n_requests = int(lat.size)
    ok = ~err
    ok_lat = lat[ok]
    p99 = float(np.percentile(ok_lat, 99)) if ok_lat.size else math.nan
    return {
        "offered_qps": float(rate),
        "sent": n_requests,
        "ok": int(ok.sum()),
        "errors": int(err.sum()),
        "error_rate": float(err.mean()) if n_requests else 0.0,
        "achieved_qps": float(ok.sum() / span_s),
        "p50_ms": float(np.percentile(ok_lat, 50)) if ok_lat.size else None,
        "p95_ms": float(np.percentile(ok_lat, 95)) if ok_lat.size else None,
        "p99_ms": p99 if math.isfinite(p99) else None,
        "wall_s": float(span_s),
    }


def _run_step(
    clients: Sequence[Any],
    pairs: Sequence[tuple[str, str]],
    arms: Sequence[str],
    extras: Sequence[dict[str, str] | None],
    rate: float,
    sla_ms: float,
    n_requests: int,
    max_inflight: int,
    start_index: int,
    rng: random.Random,
) -> list[dict[str, Any]]:
    """One offered rate: `n_requests` per arm, each arm at `rate`, in rounds of one request per
    arm (the arms' order shuffled per round, the same query for every arm of a round), the
    slots evenly spaced at `1 / (rate x arms)`. One row per arm."""
    k = len(arms)
    lat = np.full((k, n_requests), np.nan)
    err = np.zeros((k, n_requests), dtype=bool)
    lock = threading.Lock()

    def one(a: int, i: int, scheduled: float) -> None:
        qid, text = pairs[(start_index + i) % len(pairs)]
        try:
            res = clients[a].search(
                f"load-{qid}-{start_index + i}", text, arms[a], deadline_ms=sla_ms, extra=extras[a] or None
            )
            failed = res.error is not None
        except Exception:  # a client bug must not hang the load test
            log.exception("load test request %d of %s failed", i, arms[a])
            failed = True
        done = time.monotonic()
        with lock:
            lat[a, i] = (done - scheduled) * 1000.0
            err[a, i] = failed

    pool = ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix=f"lens-load-{rate:g}")
    t0 = time.monotonic() + 0.005
    order = list(range(k))
    try:
        for i in range(n_requests):
            if k > 1:
                rng.shuffle(order)
            for p, a in enumerate(order):
                scheduled = t0 + (i * k + p) / (rate * k)
                pause = scheduled - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                pool.submit(one, a, i, scheduled)
    finally:
        pool.shutdown(wait=True)  # each request is bounded by the client's own hard cap
    span_s = max(time.monotonic() - t0, 1e-9)
    return [_summary(rate, lat[a], err[a], span_s) for a in range(k)]


def load_test(
    client_for: Callable[[str], Any],
    queries: Any,
    arms: Sequence[str],
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
    min_rate: float | None = None,
    max_extend_s: float = 45.0,
    seed: int = 0,
    extra: Mapping[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """QPS@SLA of every arm of `arms`, measured together, interleaved (module docstring).

    `client_for(arm)` returns the arm's client (`LensClient` or anything with its `search`),
    called once per arm. Each rate sends `clamp(rate x duration_s, min_requests, max_requests)`
    requests PER ARM. `min_rate`: the floor of the downward extension (None: no extension).
    `extra[arm]`: the arm's query parameters.

    Returns {sla_ms, seed, arms: {arm: {qps_at_sla, sustained, lowest_rate, table, requests}},
    grid (every rate tested, in order), extended (the rates added below the grid), stopped,
    wall_s}."""
    if sla_ms <= 0 or max_requests <= 0 or duration_s <= 0 or max_inflight <= 0:
        raise ValueError("qps_at_sla: sla_ms, max_requests, duration_s and max_inflight must be > 0")
    rates = sorted(float(r) for r in rates)
    if not rates or rates[0] <= 0:
        raise ValueError(f"qps_at_sla: rates must be positive, got {rates}")
    arms = list(arms)
    if not arms or len(set(arms)) != len(arms):
        raise ValueError(f"qps_at_sla: arms must be distinct and non-empty, got {arms}")
    if min_rate is not None and min_rate <= 0:
        raise ValueError(f"qps_at_sla: min_rate must be > 0, got {min_rate}")
    pairs = _query_pairs(queries)
    clients = [client_for(a) for a in arms]
    extras = [(extra or {}).get(a) for a in arms]
    rng = random.Random(seed)
    t_start = time.monotonic()
    for a, c in enumerate(clients):  # open connections, warm server caches
        for i in range(min(warmup, len(pairs))):
            c.search(f"warmup-{i}", pairs[i][1], arms[a], deadline_ms=sla_ms, extra=extras[a] or None)
    tables: list[list[dict[str, Any]]] = [[] for _ in arms]
    best = [0.0] * len(arms)
    alive = [True] * len(arms)
    grid: list[float] = []
    state = {"next_index": 0}

    def step(rate: float, t_phase: float, cap_s: float) -> list[dict[str, Any]] | str:
        """Test one rate for every arm; a string says why it could not be tested."""
        if time.monotonic() - t_phase >= cap_s:
            return f"time cap {cap_s:g} s reached before {rate:g} qps"
        n = int(min(max_requests, max(min_requests, math.ceil(rate * duration_s))))
        # never schedule past the cap; a rate cut below min_requests is not measured
        n_fit = int((cap_s - (time.monotonic() - t_phase)) * rate)
        if n_fit < min(n, min_requests):
            return f"time cap {cap_s:g} s leaves too little time for {rate:g} qps"
        n = min(n, n_fit)
        rows = _run_step(clients, pairs, arms, extras, rate, sla_ms, n, max_inflight, state["next_index"], rng)
        state["next_index"] += n
        grid.append(float(rate))
        for a, row in enumerate(rows):
            row["pass"] = bool(
                row["p99_ms"] is not None and row["p99_ms"] <= sla_ms and row["error_rate"] <= max_error_rate
            )
            tables[a].append(row)
            log.info(
                "load %s @ %g qps: p99 %s ms, errors %d/%d -> %s",
                arms[a],
                rate,
                None if row["p99_ms"] is None else round(row["p99_ms"], 2),
                row["errors"],
                row["sent"],
                "pass" if row["pass"] else "FAIL",
            )
        return rows

    stopped = "all rates tested"
    for rate in rates:
        rows = step(rate, t_start, max_total_s)
        if isinstance(rows, str):
            stopped = rows
            break
        for a, row in enumerate(rows):
            if alive[a] and row["pass"]:
                best[a] = max(best[a], rate)
            elif not row["pass"] and stop_on_fail:
                alive[a] = False
        if stop_on_fail and not any(alive):
            stopped = f"p99 or errors over the SLA at {rate:g} qps"
            break

    extended: list[float] = []
    need = [a for a in range(len(arms)) if best[a] <= 0]
    if min_rate is not None and need and grid:
        lowest = min(grid)
        down: list[float] = []
        r = lowest / 2.0
        while r > min_rate * (1 + 1e-9):
            down.append(r)
            r /= 2.0
        if lowest > min_rate * (1 + 1e-9):
            down.append(float(min_rate))
        t_ext = time.monotonic()
        for rate in down:
            rows = step(rate, t_ext, max_extend_s)
            if isinstance(rows, str):
                stopped += f"; extension: {rows}"
                break
            extended.append(rate)
            for a in need:
                if best[a] <= 0 and rows[a]["pass"]:
                    best[a] = rate
            if all(best[a] > 0 for a in need):
                break
        else:
            if down and any(best[a] <= 0 for a in need):
                stopped += f"; grid extended down to the floor {min_rate:g} qps"
    out_arms = {}
    for a, name in enumerate(arms):
        tested = [row["offered_qps"] for row in tables[a]]
        out_arms[name] = {
            "qps_at_sla": float(best[a]),
            "sustained": best[a] > 0,
            "lowest_rate": min(tested) if tested else None,
            "table": tables[a],
            "requests": int(sum(row["sent"] for row in tables[a])),
        }
    return {
        "sla_ms": float(sla_ms),
        "seed": int(seed),
        "arms": out_arms,
        "grid": grid,
        "extended": extended,
        "stopped": stopped,
        "wall_s": time.monotonic() - t_start,
    }


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
    min_rate: float | None = None,
    max_extend_s: float = 45.0,
) -> dict[str, Any]:
    """Highest offered rate whose p99 client latency is <= `sla_ms` (0.0 when none passes), for
    one system alone (`load_test` measures the arms of a comparison together).

    `client_factory()` returns a `LensClient` (or anything with the same `search`); it is built
    once. Each rate sends `clamp(rate * duration_s, min_requests, max_requests)` requests.
    Returns {qps_at_sla, sla_ms, system, table: [per-rate rows], stopped, wall_s, grid,
    lowest_rate}.
    """
    if sla_ms <= 0 or max_requests <= 0 or duration_s <= 0 or max_inflight <= 0:
        raise ValueError("qps_at_sla: sla_ms, max_requests, duration_s and max_inflight must be > 0")
    if not rates or min(float(r) for r in rates) <= 0:
        raise ValueError(f"qps_at_sla: rates must be positive, got {list(rates)}")
    _query_pairs(queries)
    out = load_test(
        lambda _arm: client_factory(),
        queries,
        [system],
        sla_ms,
        rates,
        duration_s,
        max_requests,
        min_requests=min_requests,
        max_total_s=max_total_s,
        max_inflight=max_inflight,
        max_error_rate=max_error_rate,
        stop_on_fail=stop_on_fail,
        warmup=warmup,
        min_rate=min_rate,
        max_extend_s=max_extend_s,
    )
    arm = out["arms"][system]
    return {
        "qps_at_sla": arm["qps_at_sla"],
        "sla_ms": out["sla_ms"],
        "system": system,
        "table": arm["table"],
        "stopped": out["stopped"],
        "wall_s": out["wall_s"],
        "grid": out["grid"],
        "lowest_rate": arm["lowest_rate"],
    }
