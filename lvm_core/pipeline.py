"""The LVM chain as plain functions (the Dagster assets call these; `run_all` chains them).

    corpus -> concept vectors -> sequences -> checkpoints (one per variant) -> eval -> champion

Every step reads its inputs from and writes its outputs to `<data_dir>/lvm/` (atomic writes).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from lens_core.common.settings import data_dir as _dd
from lvm_core import corpus as C
from lvm_core import registry as R
from lvm_core.checks import CheckResult, LaneFigures, run_checks
from lvm_core.evaluate import evaluate_all, read_eval
from lvm_core.models import VARIANTS
from lvm_core.report import write_report
from lvm_core.sequences import make_sequences, read_sequences, write_sequences
from lvm_core.settings import load_config, pick_device
from lvm_core.train import ensure_checkpoint
from lvm_core.vectors import build_vectors, read_corpus, read_vectors, write_corpus

log = logging.getLogger(__name__)


def lvm_dir(data_dir: str | os.PathLike | None = None) -> Path:
    if data_dir is None:
        data_dir = _dd()
    return Path(data_dir).resolve() / "lvm"


def _cache_dir(data_dir: Path) -> Path:
    override = os.environ.get("LENS_CACHE_DIR")
    return Path(override).resolve() if override else data_dir / "cache"


def step_corpus(out: Path, cfg: dict) -> dict:
    corpus = C.load_default(cfg)
    meta = write_corpus(corpus, out)
    meta["max_sentences"] = cfg["corpus"].get("max_sentences")
    log.info(
        "lvm corpus: %s, %d articles, %d sentences, %d lanes",
        meta["source"],
        meta["n_articles"],
        meta["n_sentences"],
        len(meta["lanes"]),
    )
    return meta


def step_vectors(out: Path, cache_dir: Path, progress: bool = True) -> dict:
    return build_vectors(out, cache_dir, progress=progress)


def step_sequences(out: Path, cfg: dict) -> dict:
    table, cmeta = read_corpus(out)
    vecs, vmeta = read_vectors(out)
    if vmeta["corpus_hash"] != cmeta["content_hash"]:
        raise ValueError(f"{out}/concept_vectors.npy was built from another corpus; re-materialise lvm_concept_vectors")
    s = cfg["sequences"]
    seq = make_sequences(
        table.column("article_id").to_numpy(zero_copy_only=False),
        table.column("lane").to_numpy(zero_copy_only=False),
        int(s["context_len"]),
        int(s["stride"]),
        float(s["eval_fraction"]),
        float(s["val_fraction"]),
        int(s["min_eval_candidates"]),
        None if s.get("min_context") is None else int(s["min_context"]),
    )
    data_hash = f"{vmeta['sha256'][:32]}{seq.content_hash()[:32]}"
    return write_sequences(
        seq, out, {"data_hash": data_hash, "stride": int(s["stride"]), "vectors_sha256": vmeta["sha256"]}
    )


def step_checkpoint(out: Path, variant: str, cfg: dict, device: str | None = None, progress: bool = True) -> dict:
    seq, smeta = read_sequences(out)
    vecs, _ = read_vectors(out)
    return ensure_checkpoint(variant, out, seq, vecs, smeta["data_hash"], cfg, device, progress)


def step_eval(out: Path, cfg: dict, device: str | None = None) -> dict:
    seq, _ = read_sequences(out)
    vecs, _ = read_vectors(out)
    return evaluate_all(out, seq, vecs, cfg, VARIANTS, device)


def step_checks(out: Path, cfg: dict) -> list[CheckResult]:
    table, summary, details = read_eval(out)
    reg = R.read_registry(out)
    cand = R.best_variant(table)
    champ = R.champion_eval(reg, table, summary, details)
    champ_lanes = paired = None
    if champ is not None:
        lanes = champ.get("metrics", {}).get("lanes") or {}
        champ_lanes = {
            l: LaneFigures(v["hit5"], v["ci_low"], v["ci_high"], int(v["n_queries"])) for l, v in lanes.items()
        }
        r = cfg["registry"]
        cand_ev = R.model_eval(table, summary, details, cand)
        paired = R.lane_paired_diffs(cand_ev, champ, details["lanes"], int(r["bootstrap_b"]), float(r["alpha"]))
    return run_checks(
        table,
        summary,
        None if champ is None else champ["hit"],
        cfg,
        cand,
        champ_lanes,
        paired,
        "" if champ is None else champ["name"],
    )


def step_champion(out: Path, cfg: dict) -> dict:
    table, summary, details = read_eval(out)
    reg = R.read_registry(out)
    cand = R.model_eval(table, summary, details, R.best_variant(table))
    champ = R.champion_eval(reg, table, summary, details)
    r = cfg["registry"]
    budget = r.get("p95_budget_ms", cfg["checks"]["p95_ms"])
    decision = R.maybe_promote(
        cand, champ, int(r["bootstrap_b"]), float(r["alpha"]), p95_budget_ms=None if budget is None else float(budget)
    )
    reg = R.apply_decision(out, cand, decision)
    return {
        "candidate": cand["name"],
        "decision": decision,
        "champion": reg["champion"],
        "history_len": len(reg["history"]),
    }


def step_report(out: Path, run: dict | None = None) -> Path:
    """`lvm/report.md`: the models x Hit@1/5/10 table (full bank, CIs), in-batch Hit@5, p95,
    candidates, device, wall time."""
    table, summary, _ = read_eval(out)
    run = dict(run or {})
    reg = R.read_registry(out)
    if reg.get("champion") and "champion" not in run:
        run["champion"] = reg["champion"]["name"]
    return write_report(out, table, summary, run)


def run_all(
    data_dir: str | os.PathLike | None = None,
    progress: bool = True,
    overrides: dict | None = None,
    profile: str | None = None,
) -> dict:
    """Run the whole LVM chain without Dagster; returns a summary with per-step timings."""
    t_start = time.monotonic()
    device = pick_device()
    cfg = load_config(overrides, profile, device)
    out = lvm_dir(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.monotonic()
    res: dict = {"lvm_dir": str(out), "device": device, "profile": cfg["profile"]}
    log.info("lvm: profile %s on %s", cfg["profile"], device)
    res["corpus"] = step_corpus(out, cfg)
    timings["corpus"] = time.monotonic() - t
    t = time.monotonic()
    res["vectors"] = step_vectors(out, _cache_dir(out.parent), progress)
    timings["vectors"] = time.monotonic() - t
    t = time.monotonic()
    res["sequences"] = step_sequences(out, cfg)
    timings["sequences"] = time.monotonic() - t
    res["checkpoints"] = {}
    for v in VARIANTS:
        t = time.monotonic()
        meta = step_checkpoint(out, v, cfg, device, progress)
        res["checkpoints"][v] = {
            "name": meta["name"],
            "sha256": meta["sha256"],
            "reused": meta["reused"],
            "val_hit5": meta["metrics"].get("val_hit5"),
            "context_len": meta["metrics"].get("context_len"),
        }
        timings[f"checkpoint_{v}"] = time.monotonic() - t
    t = time.monotonic()
    res["eval"] = step_eval(out, cfg, device)
    timings["eval"] = time.monotonic() - t
    res["checks"] = [c.as_dict() for c in step_checks(out, cfg)]
    blocking = [c for c in res["checks"] if not c["passed"] and c["severity"] == "ERROR"]
    if blocking:
        res["champion"] = {
            "skipped": True,
            "reason": "blocking check(s) failed: " + ", ".join(c["name"] for c in blocking),
        }
    else:
        res["champion"] = step_champion(out, cfg)
    res["timings_s"] = timings
    res["wall_s"] = time.monotonic() - t_start
    gru = res["checkpoints"].get("memory_gru", {})
    res["report"] = str(
        step_report(
            out,
            {
                "profile": cfg["profile"],
                "device": device,
                "wall_s": res["wall_s"],
                "n_sentences": res["corpus"]["n_sentences"],
                "context_len": res["sequences"]["context_len"],
                "gru_context_len": gru.get("context_len"),
            },
        )
    )
    return res


if __name__ == "__main__":  # python -m lvm_core.pipeline [DATA_DIR]
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    summary = run_all(sys.argv[1] if len(sys.argv) > 1 else None)
    print(json.dumps({k: summary[k] for k in ("timings_s", "champion")}, indent=2, default=str))
