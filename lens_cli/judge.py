"""`lens-eval judge ...`: the judging queue out, human labels back in (issue 16).

    lens-eval judge export [--partition P] [--out DIR] [--cap N]
        the unjudged pool members of a weekly partition, in TREC pooling order, as
        queue.parquet, Label Studio tasks.json and label_config.xml (default
        $LENS_DATA_DIR/judging/P/; the weekly run writes the same files)
    lens-eval judge import EXPORT.json [--out FILE]
        a Label Studio JSON export -> qrels (Parquet in the qrels contract, source
        human:<annotator>; `.txt`/`.qrels` -> TREC lines with spans). Default out:
        $LENS_DATA_DIR/judgments/<export name>.parquet, which every later weekly run reads.

Errors are one line on stderr and exit 2 (bad input) with nothing written.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import polars as pl

from lens_core.common.calendar import latest_partition
from lens_core.common.contracts import QRELS_SCHEMA
from lens_core.common.hashing import atomic_path
from lens_core.common.settings import data_dir, judging_dir, judgments_dir, load_config, qrels_setting
from lens_core.common.tables import read_parquet
from lens_core.judge.judging import SPAN_KEYS, judged_members
from lens_core.judge.qrels import human_qrels_paths, read_qrels_files
from lens_core.judge.queue import export_queue, import_label_studio, judging_queue, write_trec_qrels


def _staging(table: str, partition: str) -> Path:
    p = data_dir() / "staging" / table / f"{partition}.parquet"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no {table} table for partition {partition} (run the weekly job first)")
    return p


def cmd_export(args: argparse.Namespace) -> int:
    cfg = load_config()
    if args.data_dir:
        os.environ["LENS_DATA_DIR"] = str(Path(args.data_dir).resolve())
    part = args.partition or latest_partition()
    pool = read_parquet(_staging("pool", part))
    qrels = read_parquet(_staging("qrels", part))
    queries = read_parquet(_staging("query_suites", part))
    judged = judged_members(pool, qrels).filter(pl.col("judged")).select(SPAN_KEYS).with_columns(pl.lit(1).alias("rel"))
    cap = args.cap or cfg.judging.queue_cap_per_query
    queue = judging_queue(pool, judged, queries, cap_per_query=cap)
    out = Path(args.out) if args.out else judging_dir(part)
    paths = export_queue(queue, out, cfg.judging.grades)
    print(f"judging queue {part}: {queue.height} pool member(s) to judge (cap {cap} per query)")
    for k, p in paths.items():
        print(f"  {k:6s} {p}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    src = Path(args.export)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such Label Studio export")
    qrels = import_label_studio(src, grades=tuple(load_config().judging.grades))
    # Annotators who disagree on a span: every weekly run would refuse the file (conflicting
    # labels, as trec_eval refuses them), so it is refused here, before it reaches the judgments dir.
    clash = (
        qrels.group_by(SPAN_KEYS)
        .agg(pl.col("rel").n_unique().alias("n"), pl.format("{}={}", "source", "rel").sort().alias("by"))
        .filter(pl.col("n") > 1)
        .sort(SPAN_KEYS)
    )
    if clash.height:
        c = clash.row(0, named=True)
        raise ValueError(
            f"{src}: {clash.height} span(s) labelled differently by different annotators, e.g. {c['qid']} "
            f"{c['repo']}:{c['path']}:{c['start_line']}-{c['end_line']} ({', '.join(c['by'])}); the weekly run "
            "refuses conflicting labels: resolve them in Label Studio and export again (nothing written)"
        )
    out = Path(args.out) if args.out else judgments_dir() / f"{src.stem}.parquet"
    if out.is_dir():
        raise ValueError(f"{out}: is a directory; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    # The labels the next run will read besides these (the file being replaced excluded): a
    # label that disagrees with one of them would stop every weekly run, so it stops here.
    others = [p for p in human_qrels_paths(qrels_setting(), judgments_dir()) if p.resolve() != out.resolve()]
    if others:
        before = read_qrels_files(others, load_config().judging.grades)
        clash = (
            qrels.unique(SPAN_KEYS)
            .join(before, on=SPAN_KEYS, suffix="_before")
            .filter(pl.col("rel") != pl.col("rel_before"))
            .sort(SPAN_KEYS)
        )
        if clash.height:
            c = clash.row(0, named=True)
            raise ValueError(
                f"{src}: {clash.height} label(s) disagree with labels the weekly run already reads, e.g. {c['qid']} "
                f"{c['repo']}:{c['path']}:{c['start_line']}-{c['end_line']} rel {c['rel']} here, {c['rel_before']} "
                f"by {c['source_before']}; to replace an earlier export of this project, import with --out naming "
                "its file (nothing written)"
            )
    if out.suffix in (".txt", ".qrels"):
        with atomic_path(out) as tmp:
            n = write_trec_qrels(qrels, tmp)
    else:
        with atomic_path(out) as tmp:
            pl.from_arrow(qrels.to_arrow().cast(QRELS_SCHEMA)).write_parquet(tmp)
        n = qrels.height
    who = ", ".join(sorted(set(qrels["source"].to_list()))) or "nobody"
    print(f"{n} label(s) by {who} -> {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `judge` command group to an argparse subparsers object."""
    p = subparsers.add_parser(
        "judge",
        help="judging queue out (Label Studio tasks), human labels in",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="judge_command", required=True, metavar="COMMAND")
    e = sub.add_parser("export", help="the unjudged pool members of a partition as Label Studio tasks")
    e.add_argument("--partition", help="weekly partition YYYY-MM-DD (default: the last complete week)")
    e.add_argument("--data-dir", help="LENS_DATA_DIR (default ./data)")
    e.add_argument("--out", help="output directory (default $LENS_DATA_DIR/judging/PARTITION)")
    e.add_argument("--cap", type=int, default=0, help="pool members per query (default judging.queue_cap_per_query)")
    e.set_defaults(func=cmd_export)
    i = sub.add_parser("import", help="a Label Studio JSON export -> human qrels the next weekly run reads")
    i.add_argument("export", metavar="EXPORT.json", help="Label Studio annotations export (JSON)")
    i.add_argument("--out", help="qrels file (.parquet, or .txt/.qrels for TREC lines with spans)")
    i.set_defaults(func=cmd_import)
    return p
