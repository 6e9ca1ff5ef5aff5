"""Peer: pytrec-eval-terrier, the whole process as a user runs it: parse TREC qrels and run
files, evaluate ndcg_cut.10 and recall.50, print the means as one JSON line.

    python pytrec_eval_score.py QRELS RUN [RUN ...]
"""

import json
import os
import sys

import pytrec_eval


def main() -> None:
    qrels_path, *runs = sys.argv[1:]
    with open(qrels_path) as f:
        qrels = pytrec_eval.parse_qrel(f)
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.50"})
    out = {}
    for p in runs:
        with open(p) as f:
            run = pytrec_eval.parse_run(f)
        res = ev.evaluate(run)
        n = len(res)
        out[os.path.basename(p)] = {
            "queries": n,
            "ndcg_10": sum(r["ndcg_cut_10"] for r in res.values()) / n,
            "recall_50": sum(r["recall_50"] for r in res.values()) / n,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
