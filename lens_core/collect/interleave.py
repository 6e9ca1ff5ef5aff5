"""Interleaved collection (SPEC §2, issue 17): every system of a week answers the same query
close in time, so latency, QPS and cost comparisons compare like with like.

Collected one after another, the systems of a week are measured at different times: any drift
of the machine or the endpoint (a warming cache, a noisy neighbour, a GC storm) lands on one
system and not the other, and shows up as a difference between them (an A/A pair that differs
by +12% CPU, a significant SLA-Recall@50 Δ between identical systems).

The order. The queries are cut into blocks of `block` queries (default 1: round-robin per
query). For each block the order of the systems is shuffled with a seeded RNG
(`random.Random(seed)`, the seed recorded), and each system in that order is given the block's
queries. All (query, system) tasks of the week form one sequence in that order.

The pool. ONE pool of `concurrency` worker threads serves the whole sequence: a worker takes the
next task of the sequence when it is free, so requests are issued in exactly the interleaved
order and each system gets the share of the concurrency its tasks have in the sequence (equal
for every system): no system waits for another to finish, none starves. One `LensClient` per
distinct (endpoint, repo, path_prefix) (`build_clients`); each system sends its declared
`params` with every `/search`.

Memory. Each system's raw-run file is streamed (`rawruns.RawRunWriter`, atomic: a temporary name,
then one rename) as its records become contiguous in query order. A worker does not take task
`i` while task `i - window` is unfinished, so at most `window` answered records wait for an
earlier one (one slow query cannot make the others pile up): memory is bounded by `window`,
whatever the number of queries and systems.

The guarantees of `client.collect_run` hold, from the same code (`search_isolated`, `Breaker`,
`final_record`): an invalid answer fails that query only; the first `unreachable_after` finished
queries of a system all failing with connection errors (or 401/403), or that many of its
queries in a row refused (credentials revoked mid-run), fail the run with one redacted `LensUnreachable` (`LensAuthRefused`) and no file is
put in place; progress is a line
per ~10% with each system's error count (tqdm when stderr is a tty); each file's records are in
query order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from lens_core.collect.client import (
    Breaker,
    LensClient,
    QueryResult,
    final_record,
    query_rows,
    search_isolated,
    sidecar_row,
)
from lens_core.collect.rawruns import RawRunWriter
from lens_core.common.systems import SystemConfig

log = logging.getLogger(__name__)

WINDOW_PER_WORKER = 64  # default window: this many tasks per worker may be issued ahead


def derive_seed(base_seed: int, run_id: str) -> int:
    """The interleaving seed of a run when none is configured: stable for (base seed, run id),
    different from week to week (so no system is always first)."""
    digest = hashlib.sha256(f"lens-interleave:{int(base_seed)}:{run_id}".encode()).hexdigest()
    return int(digest[:8], 16)


def interleaved_order(n_queries: int, n_systems: int, block: int = 1, seed: int = 0) -> Iterator[tuple[int, int]]:
    """(query index, system index) in issue order: per block of `block` queries, the systems in
    an order shuffled by `random.Random(seed)`, each given the block's queries in query order.
    Every system answers query i before any system answers a query of a later block."""
    if block < 1:
        raise ValueError(f"interleave: block must be >= 1, got {block}")
    rng = random.Random(seed)
    order = list(range(n_systems))
    for b0 in range(0, n_queries, block):
        rng.shuffle(order)
        for s in order:
            for q in range(b0, min(b0 + block, n_queries)):
                yield q, s


def client_key(system: SystemConfig, default_endpoint: str | None = None) -> tuple[str | None, str | None, str]:
    """What makes two systems share a client: the endpoint, the repo and the path prefix of
    the JSON response shape."""
    return (system.endpoint or default_endpoint, system.repo, system.path_prefix or "")


def build_clients(
    systems: Sequence[SystemConfig], make: Callable[[SystemConfig], LensClient], default_endpoint: str | None = None
) -> dict[str, LensClient]:
    """system name -> client, ONE client per distinct `client_key` (`make(system)` builds it
    for the first system of each key)."""
    by_key: dict[tuple, LensClient] = {}
    out: dict[str, LensClient] = {}
    for s in systems:
        key = client_key(s, default_endpoint)
        if key not in by_key:
            by_key[key] = make(s)
        out[s.name] = by_key[key]
    return out


@dataclasses.dataclass
class _SystemState:
    """One system's side of the run: its client, its writer and the records that wait for an
    earlier one (query index -> (result, req_ts))."""

    system: SystemConfig
    client: LensClient
    writer: RawRunWriter | None
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    pending: dict[int, tuple[QueryResult, float]] = dataclasses.field(default_factory=dict)
    next_q: int = 0
    answered: int = 0
    errors: int = 0
    late: int = 0
    sidecar: list[dict[str, Any]] | None = None


def collect_interleaved(
    systems: Sequence[SystemConfig],
    clients: Mapping[str, LensClient],
    queries: Any,
    run_id: str,
    paths: Mapping[str, Path],
    *,
    block: int = 1,
    seed: int = 0,
    concurrency: int = 4,
    window: int = 0,
    req_ts_fn: Callable[[], float] | None = None,
    progress: bool = True,
    check_health: bool = True,
    unreachable_after: int = 8,
    sidecars: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Collect every system of `systems` over `queries` interleaved and write each system's raw
    run to `paths[name]`. `clients[name]` is the system's client (`build_clients`).

    Returns {order, seed, block, concurrency, window, tasks, max_buffered, wall_s, systems:
    {name: {path, sha256, records, errors, late}}}. Raises `LensUnreachable` /
    `LensAuthRefused` when a system's breaker trips; then no file is put in place (an
    earlier file of the same name is left as it was).
    """
    if concurrency < 1:
        raise ValueError(f"interleave: concurrency must be >= 1, got {concurrency}")
    if window < 0:
        raise ValueError(f"interleave: window must be >= 0, got {window}")
    names = [s.name for s in systems]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"interleave: systems must be distinct and non-empty, got {names}")
    missing = [n for n in names if n not in clients or n not in paths]
    if missing:
        raise ValueError(f"interleave: no client or path for system(s) {missing}")
    rows = query_rows(queries)
    n, k = len(rows), len(systems)
    total = n * k
    window = window or WINDOW_PER_WORKER * concurrency
    distinct = list({id(c): c for c in (clients[s] for s in names)}.values())
    if check_health:
        for c in distinct:
            c.health()
    # one breaker per system, as `collect_run` has: a system whose first queries all fail to
    # connect (or are refused) ends the run, even when other systems were answered before; and
    # `unreachable_after` refusals in a row end it too (revoked mid-run: every system was
    # answered before, so no system's FIRST queries are all refused)
    breakers = {
        s.name: Breaker(clients[s.name], min(unreachable_after, n), auth_streak=unreachable_after) for s in systems
    }

    states: list[_SystemState] = []
    try:
        for s in systems:
            side = [] if sidecars is not None else None
            if sidecars is not None:
                sidecars[s.name] = side
            states.append(_SystemState(s, clients[s.name], RawRunWriter(Path(paths[s.name])), sidecar=side))
    except BaseException:
        for st in states:
            st.writer.abort()
        raise

    order = interleaved_order(n, k, block, seed)
    cv = threading.Condition()
    shared: dict[str, Any] = {"issued": 0, "low": 0, "done": 0, "failure": None}
    finished: set[int] = set()
    buffered = {"now": 0, "max": 0}
    buf_lock = threading.Lock()
    stop = threading.Event()
    log_every = max(1, total // 10)
    t0 = time.monotonic()
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm  # lazy: only for an interactive terminal

        bar = tqdm(total=total, desc=f"lens {k} systems interleaved", unit="q", leave=False)

    def take() -> tuple[int, int, int] | None:
        with cv:
            while not stop.is_set() and shared["issued"] < total and shared["issued"] - shared["low"] >= window:
                cv.wait(0.05)
            if stop.is_set() or shared["issued"] >= total:
                return None
            seq = shared["issued"]
            shared["issued"] += 1
            qi, si = next(order)
            return seq, qi, si

    def deliver(st: _SystemState, qi: int, res: QueryResult, ts: float) -> None:
        """Record the answer; write every record of this system that is now contiguous."""
        with st.lock:
            st.answered += 1
            st.errors += res.error is not None
            st.late += res.late
            st.pending[qi] = (res, ts)
            added = 1
            while st.next_q in st.pending:
                r, t = st.pending.pop(st.next_q)
                rec, recorded = final_record(st.client, run_id, st.system.name, rows[st.next_q], r, t)
                st.errors += r.error is None and recorded.error is not None
                st.writer.write(rec)
                if st.sidecar is not None:
                    st.sidecar.append(sidecar_row(recorded))
                st.next_q += 1
                added -= 1
        with buf_lock:
            buffered["now"] += added
            buffered["max"] = max(buffered["max"], buffered["now"])

    def report(done: int) -> None:
        if bar is not None:
            bar.update(1)
            if done % log_every == 0 or done == total:
                bar.set_postfix(errors=sum(st.errors for st in states), refresh=False)
        elif progress and (done % log_every == 0 or done == total):
            per = ", ".join(f"{st.system.name} {st.errors}" for st in states)
            log.info(
                "lens interleaved: %d/%d answers (%.0f%%), %.1f s; errors per system: %s",
                done,
                total,
                100.0 * done / total,
                time.monotonic() - t0,
                per,
            )

    def worker() -> None:
        try:
            while True:
                task = take()
                if task is None:
                    return
                seq, qi, si = task
                st = states[si]
                ts = req_ts_fn() if req_ts_fn is not None else None
                res = search_isolated(st.client, rows[qi][0], rows[qi][1], st.system.name, st.system.params)
                if breakers[st.system.name].observe(res) is not None:
                    stop.set()
                    return
                deliver(st, qi, res, float(ts if ts is not None else res.req_ts))
                with cv:
                    finished.add(seq)
                    while shared["low"] in finished:
                        finished.discard(shared["low"])
                        shared["low"] += 1
                    shared["done"] += 1
                    done = shared["done"]
                    cv.notify_all()
                report(done)
        except BaseException as exc:  # noqa: BLE001 - a write failure ends the run, reported once
            with cv:
                if shared["failure"] is None:
                    shared["failure"] = exc
                stop.set()
                cv.notify_all()

    threads = [
        threading.Thread(target=worker, name=f"lens-interleave-{i}", daemon=True)
        for i in range(min(concurrency, total))
    ]
    ok = False
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        tripped = next((b for b in breakers.values() if b.tripped is not None), None)
        if tripped is not None:
            raise tripped.error()
        if shared["failure"] is not None:
            raise shared["failure"]
        unfinished = [st.system.name for st in states if st.next_q != n]
        if unfinished:  # cannot happen unless a worker died without a failure: never write a short file
            raise RuntimeError(f"interleave: systems {unfinished} did not answer every query")
        infos = {}
        for st in states:
            info = st.writer.commit()
            info.update(errors=st.errors, late=st.late)
            infos[st.system.name] = info
        ok = True
    finally:
        stop.set()
        for t in threads:
            t.join()
        if not ok:
            for st in states:
                st.writer.abort()
        if bar is not None:
            bar.close()
    wall = time.monotonic() - t0
    log.info(
        "lens interleaved: %d systems x %d queries in %.1f s (seed %d, block %d, concurrency %d); errors %s",
        k,
        n,
        wall,
        seed,
        block,
        concurrency,
        {name: i["errors"] for name, i in infos.items()},
    )
    return {
        "order": "interleaved",
        "seed": int(seed),
        "block": int(block),
        "concurrency": int(concurrency),
        "window": int(window),
        "tasks": total,
        "max_buffered": buffered["max"],
        "wall_s": wall,
        "systems": infos,
    }
