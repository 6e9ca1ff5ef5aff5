"""LVM asset and check definitions: each function reads config, calls one `lvm_core.pipeline`
step and turns its result into UI metadata."""

import contextlib
import json

import dagster as dg
import pyarrow.parquet as pq
from dagster import AssetExecutionContext

from lens_core.common.contracts import LVM_EVAL_SCHEMA, SLICE_ALL, schema_markdown
from lens_core.common.settings import owners
from lvm_core import pipeline as P
from lvm_core.checks import CheckResult
from lvm_core.models import VARIANTS
from lvm_core.sequences import SPLITS_SCHEMA, WINDOWS_SCHEMA, leakage
from lvm_core.settings import PROFILE_TAG, load_config
from lvm_core.vectors import CORPUS_SCHEMA, eta_progress

GROUP = "lvm"
OWNERS = owners("lvm")
VARIANT_PARTITIONS = dg.StaticPartitionsDefinition(list(VARIANTS))
MD = dg.MetadataValue.md


def _out():
    out = P.lvm_dir()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _cfg(context) -> dict:
    """The LVM config of this run: the profile from the run tag `lvm/profile` (the weekly LVM
    schedule sets `full`), else LVM_PROFILE, else `small`."""
    tags = getattr(context, "run_tags", None) or {}
    return load_config(profile=tags.get(PROFILE_TAG))


def _progress_lines(context: AssetExecutionContext, what: str, every_s: float = 10.0):
    """A (done, total) callback that logs `what: done/total (pct, rate, ETA)` to the run's event
    log (at most every `every_s` seconds, and at the end) instead of drawing a tqdm bar."""
    return eta_progress(what, context.log.info, every_s)


def _quiet_model_bars() -> None:
    """No tqdm bars from the model loader ("Loading weights"): a terminal running `make demo` gets
    progress lines only, the run's event log the asset's own lines."""
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _md_table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"python", "parquet"},
    description="Documentation corpus (Debian linux-doc-6.1 kernel docs when installed, "
    "else Python's pydoc_data topics): one article per file, sentences in "
    "order, a lane per article (top-level section, <= 16). Capped by "
    "LVM_MAX_SENTENCES. Writes lvm/corpus.parquet.",
)
def lvm_corpus(context: AssetExecutionContext) -> dg.MaterializeResult:
    meta = P.step_corpus(_out(), _cfg(context))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": meta["n_sentences"],
            "source": meta["source"],
            "articles": meta["n_articles"],
            "lanes": MD(", ".join(f"`{l}`" for l in meta["lanes"])),
            "capped": meta["capped"],
            "max_sentences": meta["max_sentences"] or 0,
            "skipped": json.dumps(meta["skipped"]),
            "content_hash": meta["content_hash"],
            "schema": MD(schema_markdown(CORPUS_SCHEMA)),
        }
    )


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"python", "torch"},
    deps=[lvm_corpus],
    description="MiniLM (all-MiniLM-L6-v2, offline) vector per sentence, L2-normalised "
    "384-d, cached by text hash. Writes lvm/concept_vectors.npy.",
)
def lvm_concept_vectors(context: AssetExecutionContext) -> dg.MaterializeResult:
    out = _out()
    _quiet_model_bars()
    meta = P.step_vectors(out, P._cache_dir(out.parent), progress=_progress_lines(context, "embedded sentences"))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": meta["n"],
            "dim": meta["dim"],
            "model": meta["model_id"],
            "sha256": meta["sha256"],
            "corpus_hash": meta["corpus_hash"],
            "reused": bool(meta.get("reused", False)),
            "embed_seconds": float(meta.get("embed_seconds", 0.0)),
        }
    )


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"python", "parquet"},
    deps=[lvm_concept_vectors],
    description="Context windows -> next vector, split by article into train / val and "
    "a held-out eval set (deterministic by article hash, per lane). Writes "
    "lvm/sequences.parquet and lvm/article_splits.parquet.",
)
def lvm_sequences(context: AssetExecutionContext) -> dg.MaterializeResult:
    meta = P.step_sequences(_out(), _cfg(context))
    counts = meta["counts"]
    rows = [{"split": s, **c} for s, c in counts.items()]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": sum(c["windows"] for c in counts.values()),
            "context_len": meta["context_len"],
            "min_context": meta.get("min_context", meta["context_len"]),
            "stride": meta["stride"],
            "skipped_short_articles": meta["skipped_short_articles"],
            "splits": MD(_md_table(rows, ["split", "articles", "windows", "bank"])),
            "data_hash": meta["data_hash"],
            "schema": MD(schema_markdown(WINDOWS_SCHEMA) + "\n\narticle_splits:\n\n" + schema_markdown(SPLITS_SCHEMA)),
        }
    )


@dg.asset_check(asset=lvm_sequences, blocking=True, description="No article appears in two of train / val / eval.")
def lvm_sequences_leakage() -> dg.AssetCheckResult:
    table = pq.read_table(P.lvm_dir() / "article_splits.parquet")
    sets: dict[str, list[str]] = {}
    for aid, sp in zip(table.column("article_id").to_pylist(), table.column("split").to_pylist()):
        sets.setdefault(sp, []).append(aid)
    leaked = leakage(sets)
    return dg.AssetCheckResult(
        passed=not leaked,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "leaked_articles": len(leaked),
            "threshold": 0,
            "severity": "ERROR",
            "examples": ", ".join(leaked[:10]) or "none",
        },
    )


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"python", "torch"},
    deps=[lvm_sequences],
    partitions_def=VARIANT_PARTITIONS,
    description="One checkpoint per model variant (memory-augmented GRU; baselines "
    "copy-last, mean-of-context, ridge). GRU: early stopping on validation "
    "Hit@5, best epoch kept; cuda when available else cpu. Reused when data + "
    "config hash are unchanged. Writes `lvm/checkpoints/<variant>/`.",
)
def lvm_checkpoints(context: AssetExecutionContext) -> dg.MaterializeResult:
    variant = context.partition_key
    meta = P.step_checkpoint(_out(), variant, _cfg(context))
    m = meta["metrics"]
    return dg.MaterializeResult(
        metadata={
            "name": meta["name"],
            "sha256": meta["sha256"],
            "path": meta["path"],
            "reused": meta["reused"],
            "cache_key": meta["cache_key"],
            "val_hit5": float(m.get("val_hit5", float("nan"))),
            "train_seconds": float(m.get("train_seconds", 0.0)),
            "device": m.get("device", "cpu"),
            "context_len": int(m.get("context_len") or 0),
            "config": MD("```json\n" + json.dumps(meta["config"], indent=2) + "\n```"),
        }
    )


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"python", "parquet"},
    deps=[lvm_checkpoints],
    description="Hit@1/5/10 of the true next vector among the whole held-out concept "
    "bank, bootstrap CIs, per lane and overall (lane `all`), p95 per query. "
    "Writes lvm/eval_scores.parquet (LVM_EVAL_SCHEMA).",
)
def lvm_eval_scores(context: AssetExecutionContext) -> dg.MaterializeResult:
    out = _out()
    cfg = _cfg(context)
    summary = P.step_eval(out, cfg)
    table = pq.read_table(out / "eval_scores.parquet")
    report = P.step_report(out, {"profile": cfg["profile"]})
    head = [r for r in table.to_pylist() if r["lane"] == SLICE_ALL]
    wide: dict[str, dict] = {}
    for r in head:
        w = wide.setdefault(r["model"], {"model": r["model"], "p95_ms": r["p95_ms"]})
        w[f"hit@{r['k']}"] = f"{r['hit']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        if r["k"] == 5:
            w["_h5"] = r["hit"]
            ib = summary["models"].get(r["model"], {}).get("inbatch", {})
            if "hit5" in ib:
                w["in-batch hit@5 (16)"] = f"{ib['hit5']:.3f} [{ib['hit5_ci'][0]:.3f}, {ib['hit5_ci'][1]:.3f}]"
    rows = sorted(wide.values(), key=lambda w: w.get("_h5", 0.0), reverse=True)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.num_rows,
            "n_candidates": summary["n_candidates"],
            "n_queries": summary["n_queries"],
            "headline": MD(_md_table(rows, ["model", "hit@1", "hit@5", "hit@10", "in-batch hit@5 (16)", "p95_ms"])),
            "report": str(report),
            "schema": MD(schema_markdown(LVM_EVAL_SCHEMA)),
            "eval_set": summary["eval_set"],
        }
    )


_CHECKS = {
    "lvm_hit5_drift": ("Hit@5 of the best model not more than 5% (relative) below the champion.", True),
    "lvm_lane_health": (
        "No lane's Hit@5 more than 20% below the same lane of the current champion, with the lane's CI "
        "(a lane harder than the lane mean is reported in the details, not failed).",
        False,
    ),
    "lvm_p95_latency": ("Per-query inference p95 within 5 ms for every model.", True),
    "lvm_nan_predictions": ("NaN/Inf predictions at most 0.1% for every model.", True),
}


def _result(c: CheckResult) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=lvm_eval_scores.key,
        check_name=c.name,
        passed=c.passed,
        severity=dg.AssetCheckSeverity.ERROR if c.severity == "ERROR" else dg.AssetCheckSeverity.WARN,
        description=c.description,
        metadata={
            "value": float(c.value),
            "threshold": float(c.threshold),
            "severity": c.severity,
            "details": MD("```json\n" + json.dumps(c.details, indent=2, default=str) + "\n```"),
        },
    )


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(name, asset=lvm_eval_scores, description=d, blocking=b, metadata={"blocking": b})
        for name, (d, b) in _CHECKS.items()
    ],
    description="LVM gates (thresholds in lvm_core/config/lvm.yaml).",
)
def lvm_eval_checks():
    for c in P.step_checks(P.lvm_dir(), load_config()):  # thresholds: the same in every profile
        yield _result(c)


@dg.asset(
    group_name=GROUP,
    owners=OWNERS,
    kinds={"python"},
    deps=[lvm_eval_scores],
    description="Champion registry lvm/champion.json: the best evaluated model is promoted "
    "when its Hit@5 gain holds with CI (paired bootstrap); `lens-eval lvm "
    "rollback NAME` restores an earlier one.",
)
def lvm_champion(context: AssetExecutionContext) -> dg.MaterializeResult:
    res = P.step_champion(_out(), _cfg(context))
    champ = res["champion"] or {}
    d = res["decision"]
    m = champ.get("metrics", {})
    return dg.MaterializeResult(
        metadata={
            "champion": champ.get("name", "none"),
            "sha256": champ.get("sha256", ""),
            "candidate": res["candidate"],
            "promoted": d["promote"],
            "method": d["method"],
            "reason": d["reason"],
            "history_len": res["history_len"],
            "champion_metrics": MD(_md_table([{k: v for k, v in m.items()}], list(m))) if m else MD("none"),
        }
    )
