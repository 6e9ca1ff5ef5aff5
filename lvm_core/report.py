"""The LVM's report (issue 21): one markdown table per evaluation, `$LENS_DATA_DIR/lvm/report.md`.

Rows: the evaluated models. Columns: full-bank Hit@1/5/10 with 95% CIs (the protocol of
`lvm_core.evaluate`: whole held-out bank, the query's context sentences excluded), the in-batch
Hit@5 (batch of 16, as the seed's trainer measured: labelled apart, not comparable), p95 ms,
candidates, and for the run: profile, device, wall time, corpus size, context length.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from lens_core.common.contracts import SLICE_ALL
from lens_core.common.hashing import atomic_write_bytes

REPORT_FILE = "report.md"


def _ci(h: float, lo: float, hi: float) -> str:
    return f"{h:.3f} [{lo:.3f}, {hi:.3f}]"


def report_markdown(table: pa.Table, summary: dict, run: dict | None = None) -> str:
    """The report's markdown from `eval_scores.parquet` + `eval_summary.json` (+ run facts:
    profile, device, wall_s, n_sentences, context_len, champion)."""
    run = run or {}
    rows = [r for r in table.to_pylist() if r["lane"] == SLICE_ALL]
    by: dict[str, dict] = {}
    for r in rows:
        by.setdefault(r["model"], {})[r["k"]] = r
    order = sorted(by, key=lambda m: -by[m].get(5, {"hit": 0.0})["hit"])
    cpq = summary.get("candidates_per_query", {})
    inb = int(next(iter(summary["models"].values())).get("inbatch", {}).get("batch_size", 16)) if by else 16
    head = [
        "| model | Hit@1 full bank | Hit@5 full bank | Hit@10 full bank | "
        f"Hit@5 in-batch ({inb}) | p95 ms | candidates | device |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines = []
    for m in order:
        k = by[m]
        st = summary["models"].get(m, {})
        ib = st.get("inbatch", {})
        ib5 = _ci(ib["hit5"], *ib["hit5_ci"]) if "hit5" in ib else "—"
        cells = [_ci(k[x]["hit"], k[x]["ci_low"], k[x]["ci_high"]) if x in k else "—" for x in (1, 5, 10)]
        lines.append(
            f"| {m} | {' | '.join(cells)} | {ib5} | {k[5]['p95_ms']:.3f} | {k[5]['n_candidates']} "
            f"| {st.get('device', run.get('device', '?'))} |"
        )
    facts = [
        f"- profile `{run.get('profile', '?')}`, device `{run.get('device', '?')}`, wall time "
        + (f"{run['wall_s']:.0f} s" if isinstance(run.get("wall_s"), (int, float)) else "?"),
        f"- corpus {run.get('n_sentences', '?')} sentences; context length {run.get('context_len', '?')}"
        + (f" (GRU kept at {run['gru_context_len']})" if run.get("gru_context_len") else ""),
        f"- {summary.get('n_queries', '?')} held-out queries; bank {summary.get('n_candidates', '?')} candidates, "
        f"per query {cpq.get('min', '?')}–{cpq.get('max', '?')} after removing its context sentences",
        "- full bank: " + str(summary.get("protocol", "")),
        "- " + str(summary.get("inbatch_protocol", "")),
    ]
    if run.get("champion"):
        facts.append(f"- champion: {run['champion']}")
    return "\n".join(["## LVM evaluation", "", *head, *lines, "", *facts, ""])


def write_report(out_dir: str | os.PathLike, table: pa.Table, summary: dict, run: dict | None = None) -> Path:
    path = Path(out_dir) / REPORT_FILE
    atomic_write_bytes(path, report_markdown(table, summary, run).encode())
    return path
