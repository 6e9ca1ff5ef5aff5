"""Weekly-run worker: runs what `make demo` runs (`lens-eval run --with-lvm`: the weekly chain,
`lens_assets.run.run_weekly`, then the LVM group, `lvm_assets.run.run_lvm`) against a Dagster
instance in $DAGSTER_HOME, then reads every run's per-step timings from the instance and
attributes the process's peak RSS to the step that was running. Prints one JSON line:
{wall_s, success, published, errors, rss_method, peak_rss_mb, steps: {step_key: {s, rss_mb}}}.

    DAGSTER_HOME=D LENS_DATA_DIR=X python weekly_worker.py PARTITION [QUERIES_PER_SUITE] [--no-lvm]
        [--after-ingestion | --after-collection]

Peak RSS per step: the steps run one after another in this process (in-process executor). A
sampler thread reads the process's high-water mark (VmHWM) every 10 ms and resets it (Linux
`/proc/self/clear_refs`, "5"), so each sample is the peak of its own 10 ms and no spike between
samples is missed; where the reset is not allowed it samples VmRSS instead (`rss_method` says
which). A step's peak is the largest sample whose interval overlaps the step's start..end from
the instance's step stats.
"""

import json
import sys
import threading
import time

SAMPLE_S = 0.01


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class RssSampler(threading.Thread):
    """(end time, peak RSS kB over the interval since the previous sample) every SAMPLE_S."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float, int]] = []  # (interval start, end, peak kB)
        self.stop = threading.Event()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM reset every 10 ms (clear_refs)"
        except OSError:
            self.method = "VmRSS sampled every 10 ms"

    def _peak(self) -> int:
        if self.method.startswith("VmRSS"):
            return _status_kb("VmRSS")
        kb = _status_kb("VmHWM")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return kb

    def run(self) -> None:
        last = time.time()
        while not self.stop.wait(SAMPLE_S):
            now = time.time()
            self.samples.append((last, now, self._peak()))
            last = now

    def peak_mb(self, start: float, end: float) -> float | None:
        peaks = [kb for a, b, kb in self.samples if b >= start and a <= end]
        return max(peaks) / 1024.0 if peaks else None


def main() -> None:
    partition = sys.argv[1]
    args = [a for a in sys.argv[2:] if not a.startswith("--")]
    qps = int(args[0]) if args else 0
    with_lvm = "--no-lvm" not in sys.argv
    sampler = RssSampler()
    sampler.start()
    epoch0, t0 = time.time(), time.perf_counter()
    import dagster as dg

    from lens_assets.run import dagster_instance, run_weekly

    if "--after-ingestion" in sys.argv:
        res = _after_ingestion(partition, qps)
    elif "--after-collection" in sys.argv:
        res = _after_ingestion(partition, qps, rerun=("agg", "hits"))
    else:
        res = run_weekly(partition, queries_per_suite=qps, progress=False)
    errors = list(res.get("errors", []))
    success = bool(res["success"])
    if with_lvm:  # as `lens-eval run --with-lvm` (make demo) does
        from lvm_assets.run import run_lvm

        with dagster_instance() as instance:
            lvm = run_lvm(instance, log=lambda *_: None)
        success = success and bool(lvm["success"])
        errors += [f"lvm: {e}" for e in lvm.get("errors", [])]
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    inst = dg.DagsterInstance.get()
    steps: dict[str, dict[str, float | None]] = {}
    records = [r for r in inst.get_run_records() if r.start_time and r.start_time >= epoch0 - 1]
    for rec in sorted(records, key=lambda r: r.start_time):  # the runs this worker launched, in order
        for s in inst.get_run_step_stats(rec.dagster_run.run_id):
            if not (s.start_time and s.end_time):
                continue
            key = s.step_key
            n = 2
            while key in steps:  # the LVM's checkpoint step runs once per partition
                key, n = f"{s.step_key}#{n}", n + 1
            steps[key] = {"s": s.end_time - s.start_time, "rss_mb": sampler.peak_mb(s.start_time, s.end_time)}
    # resetting VmHWM also resets what the kernel reports as this process's ru_maxrss at exit:
    # the whole run's peak is the largest sample (the samples cover the whole run)
    peak = max((kb for _, _, kb in sampler.samples), default=0) / 1024.0
    print(
        json.dumps(
            {
                "wall_s": wall,
                "success": success,
                "published": bool(res["published"]),
                "errors": errors,
                "rss_method": sampler.method,
                "peak_rss_mb": peak,
                "steps": steps,
            }
        )
    )


# what `--after-ingestion` does not rerun: collection, ingestion and their inputs
UPSTREAM = {"engine_corpus", "engine_index", "query_suites", "ground_truth", "raw_runs", "agg", "hits"}


def _after_ingestion(partition: str, qps: int, rerun: tuple[str, ...] = ()) -> dict:
    """The weekly job's steps after ingestion, in-process (no output capture), on a data dir
    whose collection and ingestion a previous run made (`bench_seed_scale --keep`): the chain's
    wall time and memory without the simulator's generation, measured again. The job's own
    resources (`qps` only sizes collection, which does not run). `rerun`: assets of UPSTREAM to
    run again as well (`--after-collection`: ingestion and its data tests too, from the kept raw
    runs: every step but the generation, in one process)."""
    from lens_assets.run import dagster_instance, defs
    from lens_core.common.settings import data_dir
    from resources.launch import execute_in_process_uncaptured

    job = defs.resolve_job_def("weekly_lens_job")
    keys = [k for k in job.asset_layer.executable_asset_keys if k.to_user_string() not in UPSTREAM - set(rerun)]
    published = data_dir() / "published.json"
    before = published.stat().st_mtime if published.exists() else None
    with dagster_instance() as instance:
        r = execute_in_process_uncaptured(job, instance=instance, partition_key=partition, asset_selection=keys)
    after = published.stat().st_mtime if published.exists() else None
    return {"success": r.success, "published": after is not None and after != before, "errors": []}


if __name__ == "__main__":
    main()
