"""The week's verdict first (issue 23): one asset per weekly partition whose metadata leads with
published or not and why. Thin: the computation is lens_core.publish.verdict; this module reads
the week's staging tables and records the result (text first, then tables, then numbers the
Plots tab charts across weeks)."""

from pathlib import Path

import dagster as dg
import polars as pl

from lens_assets.common import GROUP, OWNERS_EVAL, current_systems, weekly_partitions
from lens_assets.metadata import file_url
from lens_core.common.settings import data_dir, load_config
from lens_core.common.tables import read_parquet
from lens_core.decide.canary import aa_equivalence_per_query, canary_config
from lens_core.decide.gate_view import one_line
from lens_core.measures.headline import HEADLINE_METRICS, ece_figures, headline_figures
from lens_core.publish.verdict import outcome_from_frame, previous_published_week
from lens_core.publish.verdict import (
    release_verdict as compute_verdict,
)
from lens_core.publish.verdict_text import (
    canary_markdown,
    deltas_markdown,
    failed_gates_markdown,
    gates_markdown,
    heroes_markdown,
    write_report,
)
from resources.io_manager import staging_table_path

PUBLISHED_CHECK = "published"
# The tables the verdict reads (release_bundle's outcome record included), all of this partition.
VERDICT_INPUTS = ("release_bundle", "gate_summary", "heroes", "canary_decisions", "comparisons", "scores")


def _staging(name: str, partition_key: str) -> pl.DataFrame:
    """One partition of a staging table; empty when the run did not write it."""
    p = Path(staging_table_path(name, partition_key).path)
    return read_parquet(p) if p.is_file() else pl.DataFrame()


@dg.asset(
    description="The week's verdict, first: published or not and why; the fingerprint and the one published "
    "before it; failed gates first (blocking, then WARN) with their reasons; each pack's hero or why none; "
    "the canary path of each test arm; the A/A verdict; Δ nDCG@10 and Δ SLA-Recall@50 against the "
    "previous published week with 95% CIs. Numbers (published 0/1, the baseline's headline figures, "
    "ECE per system, gate counts) chart across weeks in the Plots tab. The check `published` is red "
    "(ERROR) when the week's bundle was not published, so the run is red too.",
    owners=OWNERS_EVAL,
    kinds={"python", "markdown"},
    group_name=GROUP,
    partitions_def=weekly_partitions,
    deps=list(VERDICT_INPUTS),
    check_specs=[
        dg.AssetCheckSpec(
            PUBLISHED_CHECK,
            asset="release_verdict",
            blocking=True,
            partitions_def=weekly_partitions,
            description="The week's bundle was published (every blocking gate green); red keeps the last green.",
            metadata={"page_severity": "P0", "owner": OWNERS_EVAL[0] if OWNERS_EVAL else ""},
        )
    ],
)
def release_verdict(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    pk = context.partition_key
    t = {name: _staging(name, pk) for name in VERDICT_INPUTS}
    systems = current_systems(context)
    baseline = systems[0].name
    twin = next((s.name for s in systems if s.pack == "aa"), None)
    per_query = _staging("per_query", pk)
    aa = None
    if twin and per_query.height:  # the A/A decision the week took: TOST against the margins (issue 17)
        try:
            tost = aa_equivalence_per_query(per_query, baseline, twin, canary_config())
            aa = (
                not tost.equivalent,
                one_line(tost.reason if tost.equivalent else f"the setup is broken: {tost.reason}", 400),
            )
        except ValueError as e:  # too few paired queries to judge: said, not hidden
            aa = (None, one_line(f"A/A not judged: {e}", 400))
    v = compute_verdict(
        pk,
        outcome_from_frame(t["release_bundle"]),
        t["gate_summary"],
        t["heroes"],
        t["canary_decisions"],
        t["comparisons"],
        t["scores"],
        previous_published_week(data_dir(), pk),
        alpha=load_config().run.alpha,
        baseline=baseline,
        aa=aa,
    )
    context.log.info(v.headline)
    md: dict[str, object] = {
        "verdict": dg.MetadataValue.text(v.headline),
        "published": int(v.published),
        "why": dg.MetadataValue.text(v.why),
        "fingerprint": dg.MetadataValue.text(v.fingerprint or "no bundle"),
        "previous_fingerprint": dg.MetadataValue.text(v.previous_fingerprint or "none"),
        "failed_gates": dg.MetadataValue.md(failed_gates_markdown(v)),
        "heroes": dg.MetadataValue.md(heroes_markdown(v)),
        "canary": dg.MetadataValue.md(canary_markdown(v)),
        "aa": dg.MetadataValue.text(v.aa),
        "vs_previous_week": dg.MetadataValue.md(deltas_markdown(v)),
        "gates": dg.MetadataValue.md(gates_markdown(v)),
    }
    # numbers over weeks: the counts, the baseline's (and heroes') Δ, its headline figures, ECE
    md.update({k: val for k, val in v.numbers().items() if k != "published"})
    md.update(
        headline_figures(
            t["scores"], systems=list(dict.fromkeys([baseline, *v.focus])), metrics=tuple(HEADLINE_METRICS)
        )
    )
    md.update(ece_figures(t["gate_summary"]))
    report = write_report(data_dir() / "reports" / pk, v, t["gate_summary"])
    md["report"] = dg.MetadataValue.path(str(report / "verdict.md"))
    outcome = outcome_from_frame(t["release_bundle"])
    if outcome is not None and outcome.bundle:
        md["bundle"] = dg.MetadataValue.path(outcome.bundle)
    if outcome is not None and outcome.site:
        md["site"] = file_url(outcome.site)  # a link the UI renders clickable
    # an older week refused publication (no --allow-older) is a plain refusal, not a page (issue 18)
    refused = outcome is not None and not v.published and bool(outcome.refused) and not outcome.failed_blocking
    check = dg.AssetCheckResult(
        check_name=PUBLISHED_CHECK,
        passed=v.published,
        severity=dg.AssetCheckSeverity.WARN if refused else dg.AssetCheckSeverity.ERROR,
        description=v.headline,
        metadata={
            "partition": pk,
            "why": dg.MetadataValue.text(v.why),
            **({"refused": outcome.refused} if refused else {}),
        },
    )
    return dg.MaterializeResult(metadata=md, check_results=[check])
