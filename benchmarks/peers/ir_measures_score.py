"""Peer: ir_measures. Reads TREC qrels and runs and calls `calc_aggregate([nDCG@10, R@50])`
per run, the whole process. Prints the means as one JSON line.

    python ir_measures_score.py QRELS RUN [RUN ...]
"""

import json
import os
import sys

import ir_measures
from ir_measures import R, nDCG


def main() -> None:
    qrels_path, *runs = sys.argv[1:]
    qrels = list(ir_measures.read_trec_qrels(qrels_path))
    out = {}
    for p in runs:
        agg = ir_measures.calc_aggregate([nDCG @ 10, R @ 50], qrels, ir_measures.read_trec_run(p))
        out[os.path.basename(p)] = {"ndcg_10": float(agg[nDCG @ 10]), "recall_50": float(agg[R @ 50])}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
