"""Weekly-run worker: runs the product's weekly chain (`lens_assets.run.run_weekly`, what
`lens-eval run` / `make demo` call) against a Dagster instance in $DAGSTER_HOME, then reads
that run's per-step timings from the instance. Prints one JSON line:
{wall_s, success, published, steps: {step_key: seconds}}.

    DAGSTER_HOME=D LENS_DATA_DIR=X python weekly_worker.py PARTITION [QUERIES_PER_SUITE]
"""
import json
import sys
import time


def main() -> None:
    partition = sys.argv[1]
    qps = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    t0 = time.perf_counter()
    import dagster as dg

    from lens_assets.run import run_weekly

    res = run_weekly(partition, queries_per_suite=qps, progress=False)
    wall = time.perf_counter() - t0
    inst = dg.DagsterInstance.get()
    run = inst.get_runs(limit=1)[0]
    steps = {s.step_key: (s.end_time - s.start_time) for s in inst.get_run_step_stats(run.run_id)
             if s.start_time and s.end_time}
    print(json.dumps({"wall_s": wall, "success": bool(res["success"]), "published": bool(res["published"]),
                      "errors": res.get("errors", []), "steps": steps}))


if __name__ == "__main__":
    main()
