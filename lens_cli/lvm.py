"""`lens-eval lvm ...`: the LVM command group (`lens_cli.main` calls `register(subparsers)`).

    lens-eval lvm status              current champion and history (JSON)
    lens-eval lvm rollback NAME       restore an earlier champion by name (sha256 verified); the
                                      next evaluation judges drift and lanes against it
    lens-eval lvm run [--profile P]   the whole LVM chain in-process (lvm_core.pipeline.run_all);
                                      P = small (default, the demo) or full (whole corpus,
                                      context 100/500; LVM_PROFILE sets it too; LVM_DEVICE picks
                                      cpu/cuda)
    lens-eval lvm report              the last evaluation's table (lvm/report.md)

`--data-dir` defaults to `$LENS_DATA_DIR` (./data). Errors: one line on stderr, exit 1 (the
handler reports it). lens_cli.main imports this module lazily: it loads torch.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from pathlib import Path

from lvm_core.pipeline import lvm_dir, run_all, step_report
from lvm_core.registry import rollback, status


def _reported(fn):
    """A handler whose errors end as one line on stderr and exit 1."""

    @functools.wraps(fn)
    def run(args) -> int:
        try:
            return fn(args)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            print(f"lens-eval: lvm: error: {e}", file=sys.stderr)
            return 1

    return run


def _lvm_dir(args) -> "Path":
    return lvm_dir(args.data_dir)


@_reported
def _status(args) -> int:
    print(json.dumps(status(_lvm_dir(args)), indent=2, default=str))
    return 0


@_reported
def _rollback(args) -> int:
    reg = rollback(args.name, _lvm_dir(args))
    print(f"champion is now {reg['champion']['name']} (sha256 {reg['champion']['sha256'][:12]}…)")
    return 0


@_reported
def _run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    res = run_all(args.data_dir, progress=True, profile=args.profile)
    print(
        json.dumps(
            {
                "profile": res["profile"],
                "device": res["device"],
                "wall_s": res["wall_s"],
                "report": res["report"],
                "timings_s": res["timings_s"],
                "champion": res["champion"],
                "checks": [{k: c[k] for k in ("name", "passed", "value", "threshold")} for c in res["checks"]],
            },
            indent=2,
            default=str,
        )
    )
    return 0


@_reported
def _report(args) -> int:
    out = _lvm_dir(args)
    path = out / "report.md"
    if not path.is_file():
        path = step_report(out)
    print(path.read_text(), end="")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `lvm` command group to an argparse subparsers object."""
    p = subparsers.add_parser(
        "lvm",
        help="LVM next-concept-vector model: champion registry, training and evaluation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data-dir", default=None, help="artifact root (default $LENS_DATA_DIR or ./data); files go to DIR/lvm/"
    )
    sub = p.add_subparsers(dest="lvm_command", required=True, metavar="COMMAND")
    s = sub.add_parser("status", help="show the current champion and the history")
    s.set_defaults(func=_status)
    r = sub.add_parser("rollback", help="restore an earlier champion by name")
    r.add_argument("name", metavar="NAME", help="champion name, e.g. memory_gru@1a2b3c4d")
    r.set_defaults(func=_rollback)
    u = sub.add_parser("run", help="run the whole LVM chain in-process (train, eval, promote)")
    u.add_argument(
        "--profile",
        default=None,
        help="small (the demo's) or full (whole corpus, context 100/500); default $LVM_PROFILE or small",
    )
    u.set_defaults(func=_run)
    rp = sub.add_parser("report", help="print the last evaluation's table (lvm/report.md)")
    rp.set_defaults(func=_report)
    return p
