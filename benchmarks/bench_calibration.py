"""Calibration benchmarks (issue 8, rows 5 and 6).

5. Fit: 40 (system, intent, language) cells, 2.4 M labels. Ours: `lens_core.calibrate.calibration.
   fit_cells` (every cell's isotonic fit plus the intent- and system-level backoff
   calibrators and each fit's merged-bin share). Peer: a loop of scikit-learn
   `IsotonicRegression(out_of_bounds="clip").fit` over the 40 cells' data (no backoff levels).
   Target: no slower. Two like-for-like rows beside it: the loop of our `fit_isotonic` over the
   same 40 cells, and fit_cells against scikit-learn fitting the same set of calibrators that
   fit_cells returns (the 40 cells plus the intent- and system-level backoff calibrators, each
   over its own labels).
6. Apply: `benchmarks/bench_calibration_apply.py` (p99 per query of 50 hits, < 1 ms).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from benchmarks.common import BENCH, PY, last_json, profile_top, repeat, row, run_proc
from benchmarks.workloads import labelled_hits

SIZES = {"smoke": {"labels": 120_000, "apply": ["--smoke"]}, "full": {"labels": 2_400_000, "apply": []}}
CELL = ["system", "intent", "language"]


def _parts(df: pl.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (p["score"].to_numpy(), p["label"].to_numpy().astype(np.float64))
        for _, p in sorted(df.partition_by(CELL, as_dict=True).items())
    ]


def _sklearn_loop(df: pl.DataFrame) -> list:
    from sklearn.isotonic import IsotonicRegression

    return [IsotonicRegression(increasing=True, out_of_bounds="clip").fit(s, y) for s, y in _parts(df)]


def _sklearn_same_set(df: pl.DataFrame, keys: list[str]) -> list:
    """scikit-learn fitting every calibrator fit_cells returns: a key `system|intent|language`
    with `*` for a backoff level is fitted on the labels that level pools. The data are grouped
    the way the 40-cell loop groups them (one partition_by, timed); a level's arrays are the
    concatenation of its cells'."""
    from sklearn.isotonic import IsotonicRegression

    cells = {
        tuple(str(v) for v in k): (p["score"].to_numpy(), p["label"].to_numpy().astype(np.float64))
        for k, p in df.partition_by(CELL, as_dict=True).items()
    }
    out = []
    for key in keys:
        s_, i_, l_ = key.split("|")
        parts = [
            v for (cs, ci, cl), v in cells.items() if cs == s_ and (i_ == "*" or ci == i_) and (l_ == "*" or cl == l_)
        ]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        out.append(IsotonicRegression(increasing=True, out_of_bounds="clip").fit(x, y))
    return out


def _ours_loop(df: pl.DataFrame) -> list:
    from lens_core.calibrate.calibration import fit_isotonic

    return [fit_isotonic(s, y) for s, y in _parts(df)]


def _ours(df: pl.DataFrame):
    from lens_core.calibrate.calibration import fit_cells

    return fit_cells(df)


def run(size: str = "smoke", repeats: int = 3) -> dict[str, Any]:
    cfg = SIZES[size]
    df = labelled_hits(40, cfg["labels"])
    n_cells = df.select(CELL).n_unique()
    rows: list[dict] = []
    notes = [
        f"Labelled hits: {n_cells} cells, {df.height:,} labels, scores rounded to 4 decimals, "
        f"{df['label'].mean():.1%} relevant."
    ]
    profile = None
    _ours(df.head(5000)), _sklearn_loop(df.head(5000))  # imports and first-call costs out of the timing
    t_ours, r_ours = repeat(lambda: _ours(df), repeats)
    t_loop, _ = repeat(lambda: _ours_loop(df), repeats)
    t_sk, r_sk = repeat(lambda: _sklearn_loop(df), repeats)
    rows.append(
        row(
            "calibration fit: 40 cells (fit_cells, with backoff levels)",
            t_ours,
            peer_name="sklearn IsotonicRegression loop",
            peer=t_sk,
            target="no slower (>= 1×)",
            kind="speedup",
            threshold=1.0,
        )
    )
    keys = sorted(r_ours[0].calibrators)
    t_same, _ = repeat(lambda: _sklearn_same_set(df, keys), repeats)
    rows.append(
        row(
            f"calibration fit: fit_cells vs sklearn fitting the same {len(keys)} calibrators",
            t_ours,
            peer_name=f"sklearn IsotonicRegression, same {len(keys)} fits",
            peer=t_same,
            target="no slower (>= 1×)",
            kind="speedup",
            threshold=1.0,
        )
    )
    rows.append(
        row(
            "calibration fit: 40 cells (fit_isotonic loop, like for like)",
            t_loop,
            peer_name="sklearn IsotonicRegression loop",
            peer=t_sk,
            target="no slower (>= 1×)",
            kind="speedup",
            threshold=1.0,
        )
    )
    cs = r_ours[0]
    # parity with the peer on every cell (same fit, so predictions must agree)
    from lens_core.calibrate.calibration import CELL_KEYS

    grid_err = 0.0
    for (key, part), model in zip(sorted(df.partition_by(CELL, as_dict=True).items()), r_sk[0]):
        cal = cs.for_cell(*[str(k) for k in key])
        if cal.level != "cell":
            continue
        g = np.linspace(part["score"].min(), part["score"].max(), 501)
        grid_err = max(grid_err, float(np.abs(cal.apply(g) - model.predict(g)).max()))
    notes.append(
        f"fit_cells fitted {len(cs.calibrators)} calibrators ({len(cs.cells)} cells plus intent/system "
        f"backoff levels) over keys {CELL_KEYS}; max |ours − sklearn| on a 501-point grid per cell: "
        f"{grid_err:.1e}."
    )

    apply_runs = []

    def apply_once():
        r = run_proc([PY, BENCH / "bench_calibration_apply.py", "--json", *cfg["apply"]])
        apply_runs.append(last_json(r["stdout"]))
        return apply_runs[-1]

    repeat(apply_once, repeats)
    p99 = [r["set.apply (lookup+apply)"]["p99_us"] / 1000.0 for r in apply_runs]
    p99_direct = [r["calibrator.apply"]["p99_us"] / 1000.0 for r in apply_runs]
    rows.append(
        row(
            "calibrator apply p99 per query (lookup + apply, 50 hits)",
            p99,
            unit="ms",
            target="< 1 ms",
            kind="below",
            threshold=1.0,
        )
    )
    a = apply_runs[0]
    notes.append(
        f"Calibrator apply ({a['queries']:,} queries × {a['hits_per_query']} hits, {a['calibrators']} calibrators, "
        f"breakpoints median {a['breakpoints_median']}, max {a['breakpoints_max']}): "
        f"set.apply p50 {np.median([r['set.apply (lookup+apply)']['p50_us'] for r in apply_runs]):.1f} µs, "
        f"p99 {np.median(p99) * 1000:.1f} µs; calibrator.apply p99 {np.median(p99_direct) * 1000:.1f} µs "
        f"(medians of {len(apply_runs)} runs of `benchmarks/bench_calibration_apply.py`)."
    )
    if size == "full" and any(r["holds"] is False for r in rows):
        profile = "fit_cells, cProfile cumulative:\n\n" + profile_top(lambda: _ours(df))
    return {
        "name": "calibration",
        "title": "Calibration: fit_cells vs scikit-learn; calibrator apply latency",
        "rows": rows,
        "notes": notes,
        "profile": profile,
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "smoke", 1), indent=1, default=str))
