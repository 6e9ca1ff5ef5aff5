"""`lens-eval trec [-q] [-c] [-n] [-l N] [-M N] [-m MEASURE]... [--credit doc|span|file] QRELS RUN`.

A drop-in for trec_eval (issue 19): the same files, query set, tie-breaking, measure names and
text output (`measure<TAB>qid<TAB>value`, `all` for the summary, 4 decimals), so scripts that
parse trec_eval's output work unchanged. Without -m: trec_eval's default set (`official`);
`-m all_trec`: every supported measure of trec_eval's all_trec set. Measures are read by
`lens_core.measures.registry` (trec_eval names such as `ndcg_cut.10`, or `nDCG@10`, `P@5`,
`AP`, `RR@10`, `Judged@10`).

`lens-eval trec ...` (and `python -m lens_cli trec ...`) starts here (`entry`, from
`lens_cli.entry`) without importing `lens_cli.main` (polars, the other commands' parsers): on
files the C reader takes, the process imports numpy and nothing heavier (issue 19, speed).
`lens_cli.main` registers the same parser, so `main(["trec", ...])` in-process gives the same
output and the same one-line errors.
"""

from __future__ import annotations

import argparse
import sys

from lens_core.measures.registry import MeasureError, parse_measures
from lens_core.measures.trec import CREDITS, compute, evaluate_input, format_trec, load


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return v


def _cmd_trec(args: argparse.Namespace) -> int:
    for p in (args.qrels, args.run):
        with open(p, "rb"):  # FileNotFoundError / PermissionError: one line, exit 2 (lens_cli.main)
            pass
    try:
        runid, measures = parse_measures(args.measure or ["official"])
    except MeasureError as e:
        raise ValueError(str(e)) from None
    inp = load(args.qrels, args.run, fast=args.credit == "doc")
    r = evaluate_input(inp, complete=args.c, max_docs=args.M, credit=args.credit)
    if r.nq == 0:
        raise ValueError(f"{args.run}: no queries with both results and relevance info (as trec_eval, exit 2)")
    values = compute(r, measures, level=args.l, convention=args.convention)
    sys.stdout.write(format_trec(r, values, runid=runid, per_query=args.q, summary=not args.n))
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `trec` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "trec",
        help="trec_eval-compatible evaluation of ordinary TREC run and qrels files",
        description="Evaluate RUN against QRELS as trec_eval does (query set, tie-breaking, duplicate refusal, "
        "measure names, text output). Without -m, trec_eval's default measures.",
    )
    p.add_argument("qrels", metavar="QRELS", help="TREC qrels: qid iter docno grade")
    p.add_argument("run", metavar="RUN", help="TREC run: qid iter docno rank score tag [ignored columns]")
    p.add_argument("-q", action="store_true", help="also print each query's values")
    p.add_argument("-c", action="store_true", help="average over every judged query (missing ones score 0)")
    p.add_argument("-n", action="store_true", help="no summary (the 'all' lines)")
    p.add_argument("-l", type=int, default=1, metavar="N", help="relevance threshold: grade >= N is relevant")
    p.add_argument("-M", type=_positive, metavar="N", help="evaluate only the first N documents of each ranking")
    p.add_argument(
        "-m",
        dest="measure",
        action="append",
        metavar="MEASURE",
        help="a measure or set (repeatable): ndcg_cut.10, P.5,10, map, nDCG@10, P@5, AP, RR@10, Judged@10, "
        "official, all_trec",
    )
    p.add_argument(
        "--credit",
        choices=CREDITS,
        default="doc",
        help="doc: docno equality (trec_eval); span: SPEC §4 span credit on repo:path:start-end docnos; "
        "file: same repo and path",
    )
    p.add_argument(
        "--convention",
        choices=("v10", "v9"),
        default="v10",
        help="iprec_at_recall cutoffs as trec_eval 10.0 (lround; default) or 9.x and pytrec_eval (+0.9, truncated)",
    )
    p.set_defaults(func=_cmd_trec)
    return p


def main(argv: list[str]) -> int:
    """`lens-eval trec ARGS` on its own: the same parser (prog `lens-eval`) and the same error
    contract as `lens_cli.main.main` (one stderr line; exit 2 for bad input or usage, 1 when the
    system refuses)."""
    p = argparse.ArgumentParser(prog="lens-eval", description="Attested Lens evaluation from the command line.")
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, PermissionError) as e:
        print(f"lens-eval: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"lens-eval: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lens-eval: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """`lens-eval trec ...`: `main`, then exit (objects frozen out of the final
    collections, as `lens_cli.main.entry`)."""
    import gc

    code = main(sys.argv[1:])
    sys.stdout.flush()
    gc.freeze()
    sys.exit(code)
