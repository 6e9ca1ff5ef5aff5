"""Run the benchmarks of issue 8 and write the report (`make bench`).

    python benchmarks/run_all.py                       # full sizes, 3 repeats -> benchmarks/REPORT.md
    python benchmarks/run_all.py --smoke               # tiny sizes, 1 repeat -> benchmarks/out/REPORT.smoke.md
    python benchmarks/run_all.py --only scoring,ingest --out /tmp/R.md

Workloads are generated once per (size, seed) under benchmarks/out/ (gitignored). Each
benchmark module exposes `run(size, repeats) -> dict` (see benchmarks/common.py). A
benchmark that fails is reported as a failed row; the others still run. Exit status 0 when
the report was written (targets that do not hold are reported, not raised).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import BENCH, fmt_num, row  # noqa: E402

BENCHMARKS: dict[str, str] = {
    "scoring": "benchmarks.bench_scoring",
    "trec": "benchmarks.bench_trec",  # issue 19: lens-eval trec / score on three shapes
    "statistics": "benchmarks.bench_stats",
    "ingest": "benchmarks.bench_ingest",
    "calibration": "benchmarks.bench_calibration",
    "engine": "benchmarks.bench_engine",
    "weekly": "benchmarks.bench_weekly",
    "aa": "benchmarks.bench_aa",
    "aa_engine": "benchmarks.bench_aa_engine",  # issue 17: ~15 min (20 engine starts); --only aa_engine
}
VERSIONED = (
    "polars",
    "pyarrow",
    "numpy",
    "scipy",
    "sklearn",
    "duckdb",
    "dagster",
    "pytrec_eval",
    "ranx",
    "ir_measures",
    "numba",
)


def machine() -> dict[str, str]:
    info = {"cores": str(os.cpu_count()), "python": platform.python_version(), "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = {ln.split(":")[0]: ln.split(":")[1].strip() for ln in Path("/proc/meminfo").read_text().splitlines()}
        info["memory"] = (
            f"{int(mem['MemTotal'].split()[0]) / 1024 / 1024:.1f} GiB total, "
            f"{int(mem['MemAvailable'].split()[0]) / 1024 / 1024:.1f} GiB available at start"
        )
    except (OSError, KeyError, ValueError):
        pass
    return info


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = {"sklearn": "scikit-learn", "pytrec_eval": "pytrec-eval-terrier", "ir_measures": "ir-measures"}
    out = {}
    for m in VERSIONED:
        try:
            out[m] = version(names.get(m, m))
        except PackageNotFoundError:
            out[m] = "not installed"
    return out


def _cell(stats: dict | None, unit: str) -> str:
    if not stats:
        return "–"
    s = f"{fmt_num(stats['median'], unit)} [{fmt_num(stats['min'], unit)}–{fmt_num(stats['max'], unit)}]"
    return s + (f" n={stats['n']}" if stats["n"] != 1 else " n=1")


def summary_table(results: list[dict]) -> str:
    lines = [
        "| benchmark | ours median [min–max] | peer | peer median [min–max] | ratio | target | holds? |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for res in results:
        for r in res["rows"]:
            unit = r["unit"]
            name = r["benchmark"] + ("" if unit == "s" or f"({unit})" in r["benchmark"] else f" ({unit})")
            if r["skipped"]:
                lines.append(
                    f"| {name} | skipped | {r['peer_name'] or '–'} | – | – | {r['target'] or '–'} | "
                    f"n/a: {r['skipped']} |"
                )
                continue
            ratio = "–"
            if r["ratio"] is not None:
                ratio = f"{r['ratio']:.2f}×" + (" (ours/peer)" if r["kind"] == "within" else "")
            peer = _cell(r["peer"], unit) + (" (extrapolated)" if r["extrapolated"] and r["peer"] else "")
            holds = {True: "yes", False: "**NO**", None: "–"}[r["holds"]]
            lines.append(
                f"| {name} | {_cell(r['ours'], unit)} | {r['peer_name'] or '–'} | {peer} | {ratio} | "
                f"{r['target'] or '–'} | {holds} |"
            )
    return "\n".join(lines)


def render(results: list[dict], meta: dict) -> str:
    out = [
        f"# Benchmarks ({'smoke' if meta['smoke'] else 'full'} run)",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['machine'].get('cpu', 'cpu n/a')}, {meta['machine']['cores']} cores, "
        f"{meta['machine'].get('memory', 'memory n/a')}; Python {meta['machine']['python']}",
        f"- load average (1/5/15 min) at start: {meta['load_start']}, at end: {meta['load_end']} "
        "(the machine is shared: absolute times include contention; ratios are measured in the same run)",
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- repeats: {meta['repeats']} per figure (fewer where a figure's time budget ran out: see n), "
        f"median [min–max]; total wall {meta['wall_s']:.0f} s",
        "",
        "Ratios: for speed targets, peer median / ours median (higher is better for us); for "
        '"within" targets, ours / peer (lower is better).',
        "",
        "## Summary",
        "",
        summary_table(results),
        "",
    ]
    for res in results:
        out += [f"## {res['title']}", ""]
        if res.get("ran"):
            out.append(f"- {res['ran']}")
        out += [f"- {n}" if "\n" not in n else f"\n{n}\n" for n in res["notes"]]
        if res.get("profile"):
            out += ["", "Profile (a target does not hold):", "", "```", res["profile"].rstrip(), "```"]
        out.append("")
    return "\n".join(out)


def default_out(smoke: bool) -> Path:
    """The report path when --out is not given: a smoke run never overwrites REPORT.md."""
    return BENCH / "out" / "REPORT.smoke.md" if smoke else BENCH / "REPORT.md"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds); CI runs this")
    ap.add_argument("--repeats", type=int, default=None, help="runs per figure (default 3; 1 with --smoke)")
    ap.add_argument(
        "--out",
        help="report path (default benchmarks/REPORT.md; with --smoke "
        "benchmarks/out/REPORT.smoke.md so the real report is never overwritten)",
    )
    ap.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    args = ap.parse_args(argv)
    size = "smoke" if args.smoke else "full"
    repeats = args.repeats if args.repeats is not None else (1 if args.smoke else 3)
    if repeats < 1:
        ap.error("--repeats must be >= 1")
    names = list(BENCHMARKS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        bad = [n for n in names if n not in BENCHMARKS]
        if bad:
            ap.error(f"unknown benchmark(s) {bad}; choose from {', '.join(BENCHMARKS)}")
    out = Path(args.out) if args.out else default_out(args.smoke)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "smoke": args.smoke,
        "command": "python benchmarks/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "versions": versions(),
        "load_start": loadavg(),
        "repeats": repeats,
    }
    results = []
    for name in names:
        t1 = time.perf_counter()
        started, load0 = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), loadavg()
        print(f"[bench] {name} ({size}, repeats {repeats}) ...", file=sys.stderr, flush=True)
        try:
            res = importlib.import_module(BENCHMARKS[name]).run(size, repeats)
        except Exception as e:  # one broken benchmark must not hide the others
            traceback.print_exc()
            res = {
                "name": name,
                "title": name,
                "notes": [f"failed: {type(e).__name__}: {e}"],
                "profile": None,
                "rows": [row(name, None, skipped=f"benchmark failed: {type(e).__name__}: {str(e)[:200]}")],
            }
        print(f"[bench] {name} done in {time.perf_counter() - t1:.0f} s", file=sys.stderr, flush=True)
        res["ran"] = (
            f"ran {started} – {datetime.now(timezone.utc).strftime('%H:%M')} UTC "
            f"({time.perf_counter() - t1:.0f} s); load average (1/5/15 min) before: {load0}, after: {loadavg()}"
        )
        results.append(res)
    meta["wall_s"] = time.perf_counter() - t0
    meta["load_end"] = loadavg()
    text = render(results, meta)
    from lens_core.common.hashing import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text + "\n")
    print(summary_table(results))
    print(f"report: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
