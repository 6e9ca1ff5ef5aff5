"""LVM recipe ablations and learning curve (issue 21 item 2).

Runs on an LVM dir that already holds `corpus.parquet` and `concept_vectors.npy` (a run of
`lens-eval lvm run` or `python -m lvm_core.pipeline DATA_DIR`; the corpus cap decides the
corpus size of the learning-curve point). For each recipe (a named partial LVM config merged
over the active profile) it builds the windows (shared by recipes with the same `sequences`
block), trains the memory GRU, fits ridge and scores every model on the held-out eval articles
under the pipeline's protocol (whole de-duplicated bank, the query's context sentences
excluded), with bootstrap CIs. Then, per recipe, the paired Δ Hit@5 (per-query bootstrap) of its
GRU against the reference recipe's GRU (same eval queries and candidates) and against the best
baseline of the same windows.

    nice -n 10 .venv/bin/python benchmarks/bench_lvm.py DATA_DIR --recipes base,tau05 \
        --out benchmarks/results/lvm_ablation_8k.json

Recipes are defined in RECIPES below; `base` is the configuration under test.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from lens_core.common.hashing import atomic_write_json
from lens_core.stats.bootstrap import mean_ci
from lvm_core.evaluate import evaluate_predictors
from lvm_core.models import copy_last, mean_context
from lvm_core.pipeline import lvm_dir
from lvm_core.sequences import make_sequences
from lvm_core.settings import load_config, pick_device
from lvm_core.train import (
    Predictor,
    SplitData,
    build_predictor,
    checkpoint_key,
    fit_ridge,
    load_checkpoint,
    save_checkpoint,
    train_memory_gru,
)
from lvm_core.vectors import read_corpus, read_vectors

# Windows of up to 16 earlier sentences, every target with >= 8 (the demo's queries): recipes
# that share this block are scored on identical queries and candidate sets.
W16 = {"sequences": {"context_len": 16, "min_context": 8}}
RECIPES: dict[str, dict] = {
    "base": {},  # the demo recipe: context 8
    "w16_ctx8": W16 | {"train": {"context_lens": [8]}},  # the demo GRU, scored on the 16-windows
    "w16_ctx16": W16 | {"train": {"context_lens": [16]}},  # context length 8 -> 16
    "reg": {"train": {"lr": 0.0003, "dropout": 0.3, "weight_decay": 0.01, "epochs": 20}},
    # The delta on top of ridge's prediction instead of the last vector (starts as ridge).
    "ridge_base": {"train": {"delta_base": "ridge", "epochs": 20}},
    "ridge_base_reg": {
        "train": {"delta_base": "ridge", "lr": 0.0003, "dropout": 0.3, "weight_decay": 0.01, "epochs": 20}
    },
    "tau05": {"train": {"tau": 0.05}},
    "alpha2": {"train": {"alpha_infonce": 2.0}},
    "no_soft_neg": {"train": {"soft_negatives": False}},
    "hard_neg": {"train": {"hard_negatives": True}},
    "cosine_lr2e-3": {"train": {"lr_schedule": "cosine", "lr": 0.002}},
}


def _paired(a: np.ndarray, b: np.ndarray, bs: int, seed: int) -> dict:
    m, lo, hi = mean_ci(a - b, b=bs, seed=seed)
    return {"diff": float(m[0]), "ci": [float(lo[0]), float(hi[0])]}


def run(data_dir: str, recipes: list[str], reference: str, bs: int, save=None) -> dict:
    """Every recipe in turn; `save(res)` is called after each (partial results survive a stop)."""
    out = lvm_dir(data_dir)
    table, cmeta = read_corpus(out)
    vecs, vmeta = read_vectors(out)
    device = pick_device()
    ids = table.column("article_id").to_numpy(zero_copy_only=False)
    lanes = table.column("lane").to_numpy(zero_copy_only=False)
    seq_cache: dict[str, tuple] = {}
    res: dict = {"corpus_sentences": int(table.num_rows), "device": device, "recipes": {}}
    gru_hits: dict[str, np.ndarray] = {}
    gru_preds: dict[str, Predictor] = {}
    for name in recipes:
        cfg = load_config(RECIPES[name])
        cfg["eval"]["bootstrap_b"] = bs
        s = cfg["sequences"]
        skey = json.dumps(s, sort_keys=True)
        if skey not in seq_cache:
            seq = make_sequences(
                ids,
                lanes,
                int(s["context_len"]),
                int(s["stride"]),
                float(s["eval_fraction"]),
                float(s["val_fraction"]),
                int(s["min_eval_candidates"]),
                None if s.get("min_context") is None else int(s["min_context"]),
            )
            data = SplitData(seq, vecs, "eval")
            t = time.monotonic()
            ridge = fit_ridge(seq, vecs, cfg)
            base_preds = {
                "copy_last": Predictor("copy_last", copy_last),
                "mean_context": Predictor("mean_context", mean_context),
                "ridge": build_predictor({"variant": "ridge", "config": ridge.config, "state": ridge.state}),
            }
            btab, branks, bstats = evaluate_predictors(base_preds, data, cfg)
            logging.info("baselines on %s: %.0fs", skey, time.monotonic() - t)
            seq_cache[skey] = (seq, data, btab, branks, bstats)
        seq, data, btab, branks, bstats = seq_cache[skey]
        t = time.monotonic()
        # The pipeline's checkpoint cache (same key = same data + config): a recipe already trained
        # by `lvm run` or an earlier bench is loaded (sha256 verified), not retrained; current.json
        # (the pipeline's pointer) is never touched.
        key = checkpoint_key("memory_gru", f"{vmeta['sha256'][:32]}{seq.content_hash()[:32]}", cfg)
        path = out / "checkpoints" / "memory_gru" / f"{key[:16]}.pt"
        if path.is_file() and Path(f"{path}.json").is_file():
            ck = load_checkpoint(path)
            gru_metrics, reused = ck["metrics"], True
        else:
            gru = train_memory_gru(seq, vecs, cfg, device, progress=True)
            save_checkpoint(path, gru, key, {"bench_recipe": name})
            ck = load_checkpoint(path)
            gru_metrics, reused = gru.metrics, False
        pred = build_predictor(ck, device)
        gtab, granks, gstats = evaluate_predictors({"memory_gru": pred}, data, cfg)
        rows = [r for r in btab.to_pylist() + gtab.to_pylist() if r["lane"] == "all"]
        hits5 = {m: (r <= 5).astype(float) for m, r in (branks | granks).items()}
        best_base = max(("copy_last", "mean_context", "ridge"), key=lambda m: hits5[m].mean())
        res["recipes"][name] = {
            "overrides": RECIPES[name],
            "sequences": s,
            "n_queries": int(data.target.size),
            "n_candidates": int(data.bank.n),
            "train_seconds": float(gru_metrics.get("train_seconds", time.monotonic() - t)),
            "reused_checkpoint": reused,
            "gru_metrics": {k: v for k, v in gru_metrics.items() if k != "history"},
            "rows": rows,
            "inbatch": {m: st["inbatch"] for m, st in (bstats | gstats).items()},
            "p95_ms": {m: st["p95_ms"] for m, st in (bstats | gstats).items()},
            "gru_vs_best_baseline": {"baseline": best_base, **_paired(hits5["memory_gru"], hits5[best_base], bs, 0)},
            "skey": skey,
        }
        gru_hits[name] = hits5["memory_gru"]
        gru_preds[name] = pred
        ref_rec = res["recipes"].get(reference)
        if ref_rec is not None and ref_rec["skey"] != skey and reference in gru_preds:
            # Other windows (e.g. a longer context): the reference GRU scored on these same queries
            # and candidates too, so the context length's effect is a paired Δ.
            rt, rr, _ = evaluate_predictors({"memory_gru": gru_preds[reference]}, data, cfg)
            ref_hits = (rr["memory_gru"] <= 5).astype(float)
            res["recipes"][name]["reference_gru_on_these_windows"] = next(
                x for x in rt.to_pylist() if x["lane"] == "all" and x["k"] == 5
            )
            res["recipes"][name]["delta_vs_" + reference + "_gru_same_windows"] = _paired(
                hits5["memory_gru"], ref_hits, bs, 0
            )
        logging.info("recipe %s: %s", name, json.dumps(res["recipes"][name]["gru_vs_best_baseline"]))
        _deltas(res, gru_hits, reference, bs)
        if save is not None:
            save(res)
    return res


def _deltas(res: dict, gru_hits: dict, reference: str, bs: int) -> None:
    """Paired Δ against the reference recipe, or, for other windows, the first recipe run on them."""
    refs: dict[str, str] = {}
    if reference in res["recipes"]:
        refs[res["recipes"][reference]["skey"]] = reference
    for name, r in res["recipes"].items():
        refs.setdefault(r["skey"], name)
    for name, r in res["recipes"].items():
        ref = refs[r["skey"]]
        if ref != name and not any(k.startswith("delta_vs_") for k in r):
            r["delta_vs_" + ref] = _paired(gru_hits[name], gru_hits[ref], bs, 0)


def markdown(res: dict) -> str:
    lines = [
        f"corpus {res['corpus_sentences']} sentences, device {res['device']}",
        "",
        "| recipe | queries | candidates | GRU Hit@5 [95% CI] | best baseline Hit@5 | GRU − best baseline [CI] "
        "| Δ GRU Hit@5 vs reference [CI] | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res["recipes"].items():
        h = {(x["model"], x["k"]): x for x in r["rows"]}
        g = h[("memory_gru", 5)]
        bb = r["gru_vs_best_baseline"]
        b = h[(bb["baseline"], 5)]
        dref = next(((k[9:], v) for k, v in r.items() if k.startswith("delta_vs_")), None)
        lines.append(
            f"| {name} | {r['n_queries']} | {r['n_candidates']} | {g['hit']:.3f} [{g['ci_low']:.3f}, {g['ci_high']:.3f}] "
            f"| {bb['baseline']} {b['hit']:.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}] "
            f"| {bb['diff']:+.3f} [{bb['ci'][0]:+.3f}, {bb['ci'][1]:+.3f}] "
            + (
                f"| {dref[1]['diff']:+.3f} [{dref[1]['ci'][0]:+.3f}, {dref[1]['ci'][1]:+.3f}] vs {dref[0]} "
                if dref
                else "| — "
            )
            + f"| {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir")
    ap.add_argument("--recipes", default="base", help=f"comma-separated, from: {', '.join(RECIPES)}")
    ap.add_argument("--reference", default="base", help="recipe the paired Δ is taken against")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", default=None, help="JSON file for the results (a .md table beside it)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    names = [n.strip() for n in a.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {unknown}")

    def save(res: dict) -> None:
        if a.out:
            atomic_write_json(Path(a.out), res)
            Path(a.out).with_suffix(".md").write_text(markdown(res) + "\n")

    res = run(a.data_dir, names, a.reference, a.bootstrap, save)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
