"""LVM assets (SPEC §12, issue 7): a thin Dagster layer over `lvm_core`.

Group `lvm`: lvm_corpus -> lvm_concept_vectors -> lvm_sequences (+ leakage check) ->
lvm_checkpoints (partitioned by model variant) -> lvm_eval_scores (+ drift / lane / p95 / NaN
checks) -> lvm_champion. Each asset writes its own files under `$LENS_DATA_DIR/lvm/` and returns
a `MaterializeResult` with UI metadata; downstream assets read those files (no IO manager).
`lvm_job` materialises the group; the lead merges `defs` into the root definitions.
"""

from __future__ import annotations

import dagster as dg

from lvm_assets.assets import (
    lvm_champion,
    lvm_checkpoints,
    lvm_concept_vectors,
    lvm_corpus,
    lvm_eval_checks,
    lvm_eval_scores,
    lvm_sequences,
    lvm_sequences_leakage,
)

LVM_ASSETS = [lvm_corpus, lvm_concept_vectors, lvm_sequences, lvm_checkpoints, lvm_eval_scores, lvm_champion]
LVM_CHECKS = [lvm_sequences_leakage, lvm_eval_checks]

lvm_job = dg.define_asset_job(
    "lvm_job",
    selection=dg.AssetSelection.groups("lvm"),
    description="The LVM chain: corpus, vectors, sequences, checkpoints (all variants), held-out eval, champion.",
)

defs = dg.Definitions(assets=LVM_ASSETS, asset_checks=LVM_CHECKS, jobs=[lvm_job])

__all__ = ["defs", "lvm_job", "LVM_ASSETS", "LVM_CHECKS"]
