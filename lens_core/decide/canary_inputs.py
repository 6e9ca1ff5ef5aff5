"""Build the canary's input stream (SPEC §9) from a weekly run's tables.

Both arms answered every query of the suite (shadow pairs), so the ladder is replayed over
the run: the stream is the suite in a fixed pseudo-random order (sha256 of the qid), windows
are consecutive blocks of it, and a query is routed to the test arm at step pct when its
repo bucket is below pct. The bucket key is the query's primary ground-truth span
(`cpython/Lib/json/decoder.py:343-356`), the unit a user's query lands on: a package-level key
leaves a monorepo such as the standard library with a few dozen buckets, and a file-level key
still clusters (the demo's 847 queries fall in 127 files, so the 5% step routed 9 queries, ~1%,
to the test arm; issue 17). Buckets still nest from step to step.

Per query and arm: SLA-Recall@50 and latency from the per-query table; `confidence` = mean
calibrated confidence of the arm's hits (the arm's own calibrators); `calib_ms` = the measured
wall time of applying the arm's calibrator to that query's hits.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import polars as pl

from lens_core.calibrate.calibration import CalibratorSet
from lens_core.decide.canary import CanaryStream


def bucket_keys(ground_truth: pl.DataFrame) -> pl.DataFrame:
    """qid -> repo key of the primary (highest rel) ground-truth span."""
    top = (
        ground_truth.sort(["qid", "rel", "path"], descending=[False, True, False])
        .group_by("qid", maintain_order=True)
        .first()
    )
    return top.select(
        "qid",
        pl.format("{}/{}:{}-{}", "repo", "path", "start_line", "end_line").alias("repo"),
    )


def arm_rows(
    per_query: pl.DataFrame, labelled: pl.DataFrame, cals: CalibratorSet, system: str, keys: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One system's part of a stream, whichever arm it plays: its queries (qid, repo,
    sla_recall_50, lat_ms, confidence, calib_ms) and its labelled hits (qid, confidence,
    label). `labelled`: `label_hits` rows of (at least) that system; `keys`: `bucket_keys`.
    A system that is the control (or the A/A twin) of several tests is computed once."""
    pq = per_query.filter(pl.col("system") == system).select("qid", "sla_recall_50", "lat_ms")
    lab = labelled.filter(pl.col("system") == system).sort("qid")
    conf = cals.apply_frame(lab, score_col="score")
    lab = lab.with_columns(pl.Series("confidence", np.asarray(conf, dtype=np.float64)))
    # Measured apply latency per query: the calibrator scoring that query's hits.
    timings = []
    for (qid,), part in lab.group_by(["qid"], maintain_order=True):
        r = part.row(0, named=True)
        cal = cals.for_cell(system, r["intent"], r["language"])
        scores = part["score"].to_numpy()
        t0 = time.perf_counter()
        cal.apply(scores)
        timings.append((qid, (time.perf_counter() - t0) * 1000.0))
    tdf = pl.DataFrame(timings, schema={"qid": pl.String, "calib_ms": pl.Float64}, orient="row")
    qconf = lab.group_by("qid").agg(pl.col("confidence").mean())
    rows = (
        pq.join(keys, on="qid", how="inner")
        .join(qconf, on="qid", how="left")
        .join(tdf, on="qid", how="left")
        .with_columns(
            pl.col("confidence").fill_null(0.0),
            pl.col("calib_ms").fill_null(0.0),
            pl.col("lat_ms").fill_null(float("nan")),
        )
    )
    labels = lab.select("qid", "confidence", pl.col("label").cast(pl.Int64))
    return rows, labels


def _order(df: pl.DataFrame) -> pl.DataFrame:
    keyed = df.with_columns(
        pl.col("qid")
        .map_elements(lambda q: hashlib.sha256(q.encode()).hexdigest()[:12], return_dtype=pl.String)
        .alias("_o")
    )
    return keyed.sort(["_o", "arm"]).drop("_o")


def build_stream(
    per_query: pl.DataFrame,
    labelled: pl.DataFrame,
    cals: CalibratorSet,
    ground_truth: pl.DataFrame,
    control: str,
    test: str,
    aa_test: str,
) -> CanaryStream:
    keys = bucket_keys(ground_truth)
    return stream_from_arms(*(arm_rows(per_query, labelled, cals, s, keys) for s in (control, test, aa_test)))


ArmRows = tuple[pl.DataFrame, pl.DataFrame]


def stream_from_arms(control: ArmRows, test: ArmRows, aa_test: ArmRows) -> CanaryStream:
    """The stream of one (control, test) pair and its A/A (control, twin), from `arm_rows`."""

    def named(part: ArmRows, arm: str) -> ArmRows:
        return tuple(x.with_columns(pl.lit(arm).alias("arm")) for x in part)  # type: ignore[return-value]

    (cq, cl), (tq, tl), (aq, al) = named(control, "control"), named(test, "test"), named(aa_test, "test")
    lat_ok = pl.col("lat_ms").is_finite()
    # A query either arm failed to answer has no latency: it stays in the stream with NaN
    # replaced by the SLA-breaking sentinel, so it counts against its arm rather than vanishing.
    fill = pl.when(lat_ok).then(pl.col("lat_ms")).otherwise(1e9).alias("lat_ms")
    cols = ["qid", "repo", "arm", "sla_recall_50", "lat_ms", "confidence", "calib_ms"]
    lcols = ["qid", "arm", "confidence", "label"]
    ab = _order(pl.concat([cq, tq]).with_columns(fill).select(cols))
    aa = _order(pl.concat([cq, aq]).with_columns(fill).select(cols))
    return CanaryStream(
        queries=ab,
        labels=pl.concat([cl.select(lcols), tl.select(lcols)]),
        aa_queries=aa,
        aa_labels=pl.concat([cl.select(lcols), al.select(lcols)]),
    )
