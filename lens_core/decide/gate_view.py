"""How a week's gates read at a glance (issue 23): per gate, how many subjects pass, fail or were
judged on too little data, and one verdict per gate in which `insufficient` is never `pass`.

Pure functions over the gate summary table (`battery.gates_frame`: gate, subject, value,
threshold, blocking, passed, status, reason, owner). A subject's `status` is pass | fail |
insufficient; `passed` is the publication rule (insufficient does not block), the status is what
a reader is shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

PASS, FAIL, INSUFFICIENT = "pass", "fail", "insufficient"
# Failures first (blocking before WARN), then gates judged on too little data, then passes.
VERDICT_RANK = {FAIL: 0, INSUFFICIENT: 1, PASS: 2}


def subject_status(df: pl.DataFrame) -> pl.Expr:
    """A subject's status: its `status` column, else pass/fail from `passed`."""
    if "status" in df.columns:
        return (
            pl.when(pl.col("status").is_in([FAIL, INSUFFICIENT, PASS]))
            .then(pl.col("status"))
            .when(pl.col("passed"))
            .then(pl.lit(PASS))
            .otherwise(pl.lit(FAIL))
        )
    return pl.when(pl.col("passed")).then(pl.lit(PASS)).otherwise(pl.lit(FAIL))


def gate_overview(gates: pl.DataFrame) -> pl.DataFrame:
    """One row per gate: blocking, subjects, pass / fail / insufficient counts and the verdict
    (fail if any subject failed, else insufficient if any was, else pass); failures first."""
    schema = {
        "gate": pl.String,
        "verdict": pl.String,
        "blocking": pl.Boolean,
        "subjects": pl.UInt32,
        "pass": pl.UInt32,
        "fail": pl.UInt32,
        "insufficient": pl.UInt32,
    }
    if gates.height == 0:
        return pl.DataFrame(schema=schema)
    st = gates.with_columns(subject_status(gates).alias("_status"))
    out = (
        st.group_by("gate")
        .agg(
            pl.col("blocking").any().alias("blocking"),
            pl.len().alias("subjects"),
            (pl.col("_status") == PASS).sum().alias("pass"),
            (pl.col("_status") == FAIL).sum().alias("fail"),
            (pl.col("_status") == INSUFFICIENT).sum().alias("insufficient"),
        )
        .with_columns(
            pl.when(pl.col("fail") > 0)
            .then(pl.lit(FAIL))
            .when(pl.col("insufficient") > 0)
            .then(pl.lit(INSUFFICIENT))
            .otherwise(pl.lit(PASS))
            .alias("verdict")
        )
    )
    out = out.with_columns(pl.col("verdict").replace_strict(VERDICT_RANK, return_dtype=pl.Int64).alias("_rank")).sort(
        "_rank", pl.col("blocking").not_(), "gate"
    )
    return out.select(list(schema)).cast(schema)


def failures_first(gates: pl.DataFrame) -> pl.DataFrame:
    """The gate table with its failing subjects first (blocking before WARN), then the
    insufficient ones, then the passes; a `status` column that never says pass for insufficient."""
    if gates.height == 0:
        return gates
    st = gates.with_columns(subject_status(gates).alias("status"))
    return (
        st.with_columns(pl.col("status").replace_strict(VERDICT_RANK, return_dtype=pl.Int64).alias("_rank"))
        .sort("_rank", pl.col("blocking").not_(), "gate", "subject")
        .drop("_rank")
    )


def one_line(text: str, limit: int = 240) -> str:
    """`text` on one line, at most `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@dataclass(frozen=True)
class GateOutcome:
    """What one gate's asset check reports: passed only when every subject passed; `level` is
    error (a subject failed a blocking gate), warn (a WARN gate failed, or any subject was
    insufficient) or pass; one line for the check's description."""

    passed: bool
    level: str  # pass | warn | error
    description: str
    subjects: int
    failed: int
    insufficient: int


def gate_outcome(rows: pl.DataFrame, name: str, blocking: bool, partition: str | None = None) -> GateOutcome:
    """The check result of gate `name` over its rows of the gate summary."""
    week = f" (week {partition})" if partition else ""
    if rows.height == 0:
        return GateOutcome(False, "error" if blocking else "warn", f"{name}: not evaluated{week}", 0, 0, 0)
    st = rows.with_columns(subject_status(rows).alias("_status"))
    failed = st.filter(pl.col("_status") == FAIL)
    insufficient = st.filter(pl.col("_status") == INSUFFICIENT)
    n = rows.height
    if failed.height:
        first = failed.row(0, named=True)
        who = f"{first['subject']}: " if first.get("subject") else ""
        more = f" (+{failed.height - 1} more)" if failed.height > 1 else ""
        ins = f"; {insufficient.height} insufficient" if insufficient.height else ""
        desc = f"{name}: {failed.height} of {n} fail{week}: {who}{first['reason']}{more}{ins}"
        return GateOutcome(
            False, "error" if blocking else "warn", one_line(desc), n, failed.height, insufficient.height
        )
    if insufficient.height:
        desc = (
            f"{name}: insufficient{week}: {insufficient.height} of {n} judged on too little data "
            f"(not a pass; does not block), {n - insufficient.height} pass"
        )
        return GateOutcome(False, "warn", desc, n, 0, insufficient.height)
    return GateOutcome(True, "pass", f"{name}: all {n} subject(s) pass{week}", n, 0, 0)
