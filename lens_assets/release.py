"""The release bundle asset (SPEC §10): the week's tables copied into an attested bundle,
published only when every blocking gate is green, and the bundle's site."""

import functools
from pathlib import Path

import dagster as dg
import polars as pl

from lens_assets.common import GROUP, OWNERS_EVAL, calibration_dir, current_systems, run_id_for, weekly_partitions
from lens_assets.metadata import file_url, markdown_table
from lens_core.common.contracts import BUNDLE_COLUMNS, BUNDLE_FILES, BUNDLE_TABLES
from lens_core.common.settings import data_dir, judgments_dir, label_policy, load_config, qrels_setting
from lens_core.common.tables import read_parquet, write_parquet
from lens_core.decide.battery import frame_gates
from lens_core.decide.gate_view import failures_first
from lens_core.decide.gates import gate_table_markdown
from lens_core.judge.qrels import human_qrels_paths, qrels_manifest
from lens_core.measures.scoring import hero_markdown
from lens_core.publish.bundle import assemble, statistics_record
from lens_core.publish.site import build_site, render_served_site
from lens_core.publish.verdict import BundleOutcome, outcome_frame
from resources.data_source import LensDataSource
from resources.io_manager import staging_table_path
from resources.launch import release_weekly_partition


def bundle_sources(partition_key: str, stage: Path) -> dict[str, Path]:
    """Bundle key -> the file to copy: a staging table as is, or its CSV written into `stage`."""
    files: dict[str, Path] = {}
    for key, asset in BUNDLE_TABLES.items():
        src = Path(staging_table_path(asset, partition_key).path)
        if BUNDLE_FILES.get(key, key).endswith(".csv"):
            df = read_parquet(src)
            if key in BUNDLE_COLUMNS:
                df = df.select(list(BUNDLE_COLUMNS[key]))
            dst = stage / Path(BUNDLE_FILES.get(key, key)).name
            df.write_csv(dst)
            src = dst
        files[key] = src
    return files


@dg.asset(
    description="The release bundle of SPEC §10: tables copied into `bundles/FINGERPRINT/`, attestation.json "
    "(sha256 of every artifact, cfg hashes, versions, data source, every gate, each pack's hero and "
    "the config lock) and published.json, which moves only when every blocking gate is green.",
    owners=OWNERS_EVAL,
    kinds={"json"},
    group_name=GROUP,
    partitions_def=weekly_partitions,
    deps=sorted(set(BUNDLE_TABLES.values()) - {"gate_summary", "heroes", "hero_table"})
    + ["ground_truth", "calibration", "calibration_parity"],
)
def release_bundle(
    context: dg.AssetExecutionContext,
    lens_source: LensDataSource,
    raw_runs: pl.DataFrame,
    gate_summary: pl.DataFrame,
    heroes: pl.DataFrame,
    hero_table: pl.DataFrame,
) -> dg.MaterializeResult:
    pk = context.partition_key
    root = data_dir()
    stage = root / "staging" / f".bundle-{pk}"
    stage.mkdir(parents=True, exist_ok=True)
    files = bundle_sources(pk, stage)
    systems = current_systems(context)
    gates = frame_gates(gate_summary)
    lock = {
        r["pack"]: {
            "hero": r["hero"],
            "cfg_hash": r["cfg_hash"],
            "calibration_version": r["calibration_version"],
            "reason": r["reason"],
        }
        for r in heroes.iter_rows(named=True)
    }
    lvm_dir = root / "lvm"
    lvm = lvm_dir if lvm_dir.is_dir() else None
    result = assemble(
        root,
        files,
        raw_runs.select("path", "sha256").to_dicts(),
        {s.name: s.cfg_hash for s in systems},
        gates,
        lens_source.describe(),
        extra={
            "run_id": run_id_for(pk),
            "partition": pk,
            "heroes": lock,
            "systems": {s.name: {"pack": s.pack, **s.knobs()} for s in systems},
            # what verify needs to re-run the CIs and p-values (issue 18): seed, B and alpha of the week
            "statistics": statistics_record(load_config()),
            "judging": {
                "label_policy": label_policy(lens_source.resolved_source()),
                "human_qrels": qrels_manifest(human_qrels_paths(qrels_setting(), judgments_dir())),
            },
        },
        extra_dirs={"calibration": calibration_dir(pk)},
        # the served site is rendered into the directory that publication swaps in with the pointer
        render_site=functools.partial(render_served_site, lvm_dir=lvm),
    )
    if result.refused_older:
        context.log.warning(f"bundle {result.fingerprint} NOT published (refused, not paged): {result.refused_older}")
    elif not result.published:
        context.log.warning(
            f"bundle {result.fingerprint} NOT published: blocking gate(s) failed: "
            f"{', '.join(result.failed_blocking)}; last green stays {result.previous_published}"
        )
    size = sum(p.stat().st_size for p in result.path.rglob("*") if p.is_file())
    site = result.path / "site" / "index.html" if result.published else build_site(result.path, lvm_dir=lvm)
    served = root / "site" / "index.html" if result.published else None
    # what release_verdict reads: this week's fingerprint, whether it was published, and the one before
    outcome = BundleOutcome(
        fingerprint=result.fingerprint,
        published=result.published,
        previous_published=result.previous_published,
        failed_blocking=result.failed_blocking,
        bundle=str(result.path),
        site=str(served or site),
        refused=result.refused_older,
    )
    write_parquet(outcome_frame(outcome), staging_table_path("release_bundle", pk).path)
    release_weekly_partition(context)  # the partition's lease, taken by query_suites (issue 18)
    return dg.MaterializeResult(
        metadata={
            "fingerprint": result.fingerprint,
            "bundle": dg.MetadataValue.path(str(result.path)),
            "published": result.published,
            "bundle_bytes": size,
            "gates": dg.MetadataValue.md(gate_table_markdown(frame_gates(failures_first(gate_summary)))),
            "hero_table": dg.MetadataValue.md(hero_markdown(hero_table)),
            "heroes": dg.MetadataValue.md(markdown_table(heroes)),
            "failed_blocking": ", ".join(result.failed_blocking) or "none",
            # a plain refusal (older than the published week), not a gate failure: never paged
            "refused": result.refused_older or "",
            # links the UI renders clickable (a path entry is only copyable text)
            "site": file_url(site),
            "served_site": file_url(served) if served else "not published",
        }
    )
