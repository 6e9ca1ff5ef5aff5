"""Shared helpers for the benchmarks: timing with repeats, subprocess runs with their own
peak RSS (`os.wait4` in a small launcher, see `run_proc`), result rows, and the output folder.

A benchmark module exposes `run(size, repeats) -> dict` with this shape:

    {"name": str, "title": str,
     "rows": [Row...],            # summary-table rows (see `row`)
     "notes": [str...],           # markdown lines for the per-benchmark section
     "profile": str | None}       # top of a profile when a target does not hold

`size` is "smoke" (tiny, seconds) or "full" (the sizes of issue 8).
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
OUT = BENCH / "out"
PY = sys.executable


def out_dir(*parts: str) -> Path:
    """A folder under benchmarks/out (gitignored); `LENS_BENCH_OUT` overrides the root."""
    root = Path(os.environ.get("LENS_BENCH_OUT", OUT))
    d = root.joinpath(*parts)
    d.mkdir(parents=True, exist_ok=True)
    return d


def sub_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra)
    return env


def scale_env(root: Path, full_grids: bool) -> dict[str, str]:
    """The environment of a chain at scale on the simulator (`bench_seed_scale`,
    `bench_step_rss`): data dir `root/data`, Dagster home `root/home`, no shared cache."""
    env = sub_env(
        LENS_DATA_DIR=str(root / "data"),
        DAGSTER_HOME=str(root / "home"),
        DATA_SOURCE="sim",
        LENS_FULL_GRIDS="1" if full_grids else "0",
    )
    env.pop("LENS_CACHE_DIR", None)
    return env


class SubprocessFailed(RuntimeError):
    pass


# The process that launches a measured command. Linux records the old memory map's high-water
# mark into the new program's ru_maxrss at exec (with vfork/posix_spawn, the parent's map), so a
# command started straight from this (by then often gigabytes large) harness reports the
# harness's peak as its own. This tiny interpreter spawns the command instead, waits for it and
# writes the command's own rusage to a file: the command's peak RSS, floored at this launcher's
# ~10 MB.
_LAUNCHER = """
import os, sys
out, argv = sys.argv[1], sys.argv[2:]
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, ru = os.wait4(pid, 0)
with open(out, "w") as f:
    f.write(f"{ru.ru_maxrss} {ru.ru_utime} {ru.ru_stime}")
code = os.waitstatus_to_exitcode(status)
os._exit(code if code >= 0 else 128 - code)
"""


def run_proc(
    cmd: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None, timeout_s: float = 1800.0
) -> dict[str, Any]:
    """Run a command; return {wall_s, rss_mb (the command's own peak RSS), cpu_s, stdout,
    stderr, rc}.

    Wall time is measured around the whole process (start-up and imports included). Peak
    RSS and CPU come from `os.wait4` on the command itself, through `_LAUNCHER`, so neither
    this harness's memory nor another run's is counted. On timeout the command's whole
    process group is killed."""
    with (
        tempfile.TemporaryFile() as fo,
        tempfile.TemporaryFile() as fe,
        tempfile.NamedTemporaryFile(prefix="lens-bench-rusage-", mode="r") as fr,
    ):
        t0 = time.perf_counter()
        p = subprocess.Popen(
            [PY, "-S", "-c", _LAUNCHER, fr.name, *map(str, cmd)],
            stdout=fo,
            stderr=fe,
            env=env or sub_env(),
            cwd=str(cwd or REPO),
            start_new_session=True,
        )
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()
        wall = time.perf_counter() - t0
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read().decode(errors="replace"), fe.read().decode(errors="replace")
        usage = fr.read().split()
    rss_kb, utime, stime = (float(x) for x in usage) if len(usage) == 3 else (float("nan"),) * 3
    res = {
        "wall_s": wall,
        "rss_mb": rss_kb / 1024.0,
        "stdout": out,
        "stderr": err,
        "rc": p.returncode,
        "cpu_s": utime + stime,
    }
    if p.returncode != 0:
        raise SubprocessFailed(f"{' '.join(map(str, cmd))[:300]} exited {p.returncode}: {err.strip()[-800:]}")
    return res


def last_json(stdout: str) -> dict[str, Any]:
    """The last line of stdout that parses as a JSON object."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError(f"no JSON line in output: {stdout[-400:]!r}")


def repeat(fn: Callable[[], Any], repeats: int, max_total_s: float | None = None) -> tuple[list[float], list[Any]]:
    """Call `fn` `repeats` times (at least once; fewer when `max_total_s` is spent) and return
    (seconds per call, results). `fn` may return a dict with its own "seconds" figure
    (timed inside a worker), which then replaces the wall time of the call."""
    times: list[float] = []
    results: list[Any] = []
    t_start = time.perf_counter()
    for i in range(max(1, repeats)):
        if i and max_total_s is not None and time.perf_counter() - t_start > max_total_s:
            break
        t0 = time.perf_counter()
        r = fn()
        dt = time.perf_counter() - t0
        if isinstance(r, dict) and "seconds" in r:
            dt = float(r["seconds"])
        times.append(dt)
        results.append(r)
    return times, results


def stats(values: Sequence[float]) -> dict[str, float]:
    v = [float(x) for x in values]
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def row(
    benchmark: str,
    ours: Sequence[float] | None,
    unit: str = "s",
    peer_name: str | None = None,
    peer: Sequence[float] | None = None,
    target: str = "",
    kind: str | None = None,
    threshold: float | None = None,
    note: str = "",
    skipped: str | None = None,
    extrapolated: bool = False,
) -> dict[str, Any]:
    """One summary row. `kind`:
    - "speedup": holds when peer median / ours median >= threshold;
    - "within": holds when ours median / peer median <= threshold (a floor we may trail);
    - "max": holds when ours median <= threshold (no peer needed);
    - "below": holds when ours median < threshold;
    - None: informational.
    `skipped` replaces the figures with a reason (peer or component not available)."""
    r: dict[str, Any] = {
        "benchmark": benchmark,
        "unit": unit,
        "peer_name": peer_name,
        "target": target,
        "kind": kind,
        "threshold": threshold,
        "note": note,
        "skipped": skipped,
        "extrapolated": extrapolated,
    }
    r["ours"] = stats(ours) if ours else None
    r["peer"] = stats(peer) if peer else None
    r["ratio"] = None
    r["holds"] = None
    if skipped or r["ours"] is None:
        return r
    om = r["ours"]["median"]
    if r["peer"] is not None and om > 0:
        pm = r["peer"]["median"]
        r["ratio"] = pm / om if kind != "within" else om / pm
    if kind in ("speedup",) and r["ratio"] is not None:
        r["holds"] = r["ratio"] >= threshold
    elif kind == "within" and r["ratio"] is not None:
        r["holds"] = r["ratio"] <= threshold
    elif kind == "max":
        r["holds"] = om <= threshold
    elif kind == "below":
        r["holds"] = om < threshold
    return r


def profile_top(fn: Callable[[], Any], limit: int = 18) -> str:
    """cProfile `fn` and return the top of the cumulative-time table."""
    pr = cProfile.Profile()
    pr.enable()
    try:
        fn()
    finally:
        pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).strip_dirs().sort_stats("cumulative").print_stats(limit)
    text = s.getvalue()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    return "\n".join(lines[max(0, start - 2) :])


def profile_subprocess(cmd: Sequence[str], limit: int = 18, env: dict[str, str] | None = None) -> str:
    """Run a Python command line under cProfile (`python -m cProfile -o`), return its top."""
    with tempfile.TemporaryDirectory() as td:
        prof = Path(td) / "prof.out"
        args = list(map(str, cmd))
        assert args[0] == PY, "profile_subprocess expects a python command line"
        run_proc([PY, "-m", "cProfile", "-o", str(prof), *args[1:]], env=env)
        s = io.StringIO()
        pstats.Stats(str(prof), stream=s).strip_dirs().sort_stats("cumulative").print_stats(limit)
    lines = [ln for ln in s.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    return "\n".join(lines[max(0, start - 2) :])


def installed_state() -> str:
    """Put our packages in the state a user's install has before whole processes are timed:
    bytecode compiled (pip compiles a wheel's modules at install; a repository copy under
    PYTHONDONTWRITEBYTECODE would compile every module from source on every start, ~45 ms of
    `lens-eval score`) and the C extensions built (setup.py; a `git archive` copy has none, and
    `lens-eval trec` then takes its polars reader). Returns a line for the report's notes."""
    import compileall
    import sysconfig

    for pkg in ("lens_core", "lens_cli"):
        compileall.compile_dir(str(REPO / pkg), quiet=1)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    exts = [
        REPO / "lens_core" / "ingest" / f"_canonscan{suffix}",
        REPO / "lens_core" / "measures" / f"_trecscan{suffix}",
    ]
    if not all(e.exists() for e in exts):  # optional, as in setup.py: without a compiler, none
        subprocess.run([PY, "setup.py", "build_ext", "--inplace", "-q"], cwd=REPO, check=False, capture_output=True)
    built = [e.name for e in exts if e.exists()]
    return f"as installed: bytecode compiled, C extensions built ({', '.join(built) or 'none'})"


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def fmt_num(x: float | None, unit: str = "s") -> str:
    if x is None:
        return "–"
    if unit == "s":
        return f"{x:.3f}" if x < 10 else f"{x:.1f}"
    if unit in ("MB", "ms", "us", "qps"):
        if x < 1:
            return f"{x:.3f}"
        return f"{x:,.1f}" if x < 1000 else f"{x:,.0f}"
    return f"{x:.4g}"
