"""Peer: ranx. Loads TREC qrels and runs (Qrels/Run.from_file), then calls `evaluate` on every
run twice: the first call pays numba's JIT (or its on-disk cache), the second is the warm
figure. Prints one JSON line with load_s, cold_s, warm_s and the means.

    python ranx_score.py QRELS RUN [RUN ...]
"""

import json
import os
import sys
import time


def main() -> None:
    t0 = time.perf_counter()
    from ranx import Qrels, Run, evaluate

    qrels_path, *runs = sys.argv[1:]
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    qrels = Qrels.from_file(qrels_path, kind="trec")
    loaded = [Run.from_file(p, kind="trec") for p in runs]
    load_s = time.perf_counter() - t0
    metrics = ["ndcg@10", "recall@50"]
    t0 = time.perf_counter()
    for r in loaded:
        evaluate(qrels, r, metrics)
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    means = {}
    for p, r in zip(runs, loaded):
        m = evaluate(qrels, r, metrics)
        means[os.path.basename(p)] = {"ndcg_10": float(m["ndcg@10"]), "recall_50": float(m["recall@50"])}
    warm_s = time.perf_counter() - t0
    print(json.dumps({"import_s": t_import, "load_s": load_s, "cold_s": cold_s, "warm_s": warm_s, "means": means}))


if __name__ == "__main__":
    main()
