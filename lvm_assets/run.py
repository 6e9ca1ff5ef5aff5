"""Materialise the LVM group in-process (what `lens-eval run --with-lvm` and `make demo` call).

The checkpoints are partitioned by model variant, so the group runs in three steps on one
instance: corpus -> concept vectors -> sequences; one run per checkpoint partition; then the
held-out evaluation and the champion, with their checks.
"""

from __future__ import annotations

import time
from typing import Any

import dagster as dg

from lvm_assets import LVM_ASSETS, LVM_CHECKS


def run_lvm(instance: dg.DagsterInstance, log=print) -> dict[str, Any]:
    t0 = time.monotonic()
    everything = [*LVM_ASSETS, *LVM_CHECKS]
    ckpt = next(a for a in LVM_ASSETS if a.key == dg.AssetKey("lvm_checkpoints"))
    variants = ckpt.partitions_def.get_partition_keys()
    stages: list[tuple[list[str], str | None]] = [(["lvm_corpus", "lvm_concept_vectors", "lvm_sequences"], None)]
    stages += [(["lvm_checkpoints"], v) for v in variants]
    stages += [(["lvm_eval_scores", "lvm_champion"], None)]
    out: dict[str, Any] = {"success": True, "checks": {}, "steps": []}
    for selection, key in stages:
        t = time.monotonic()
        res = dg.materialize(
            everything,
            selection=selection,
            partition_key=key,
            instance=instance,
            raise_on_error=False,
            tags={"lens/entry": "lens-eval run --with-lvm"},
        )
        label = ",".join(selection) + (f"[{key}]" if key else "")
        out["steps"].append((label, time.monotonic() - t, res.success))
        log(f"lvm: {label}: {'ok' if res.success else 'FAILED'} in {time.monotonic() - t:.1f}s")
        for ev in res.get_asset_check_evaluations():
            out["checks"][ev.check_name] = ev.passed
        if not res.success:
            out["success"] = False
            errs = [ev.event_specific_data.error for ev in res.all_events if ev.is_step_failure]
            msgs = []
            for err in errs:
                while err.cause is not None:
                    err = err.cause
                msgs.append(err.message)
            out["errors"] = msgs
            out["blocked_by_checks"] = bool(msgs) and all("blocking asset check" in m for m in msgs)
            break
    out["wall_s"] = time.monotonic() - t0
    return out
