"""`lens-eval site BUNDLE [--out DIR] [--lvm-dir DIR] [--publish]`: the bundle's static page."""

from __future__ import annotations

import argparse

from lens_core.publish.site import build_site, publish_site


def _cmd_site(args: argparse.Namespace) -> int:
    if args.publish:
        path = publish_site(args.bundle, lvm_dir=args.lvm_dir)
    else:
        path = build_site(args.bundle, out_dir=args.out, lvm_dir=args.lvm_dir)
    print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `site BUNDLE [--out DIR] [--lvm-dir DIR] [--publish]` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "site",
        help="build the bundle's static transparency site (self-contained index.html)",
        description="Build BUNDLE/site/index.html: leaderboard with CI whiskers, latency, gates, heroes, canary, "
        "pool, calibration, LVM evaluation and attestation, readable offline. Prints its path. "
        "With --publish, BUNDLE is the data dir and its published bundle's site is served from DIR/site/.",
    )
    p.add_argument(
        "bundle", metavar="BUNDLE", help="bundle directory (bundles/<fingerprint>), or the data dir with --publish"
    )
    p.add_argument("--out", help="output directory (default BUNDLE/site)")
    p.add_argument("--lvm-dir", help="LVM output dir with eval_scores.parquet (default: <data dir>/lvm)")
    p.add_argument(
        "--publish",
        action="store_true",
        help="BUNDLE is $LENS_DATA_DIR: build the published bundle's site and serve it from DIR/site/",
    )
    p.set_defaults(func=_cmd_site)
    return p
