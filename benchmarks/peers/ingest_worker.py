"""Ingest worker: one way of turning a raw-run NDJSON file into agg + hits Parquet, timed
inside the process (after imports). Prints one JSON line {seconds, agg_rows, hits_rows}.

    python ingest_worker.py ours|stdlib|pyarrow RAW.ndjson OUT_DIR

- ours: lens_core.ingest.ndjson.ingest_to_parquet, what the weekly chain's agg_and_hits asset and the
  nightly Parquet regeneration run (validation + derived columns + schema guard, both tables
  written atomically as zstd Parquet with `tables.write_parquet`'s options).
- stdlib: the notebook way: a `json.loads` loop over lines appending to column lists (no
  validation, no derived SLA columns), then pyarrow tables written as zstd Parquet.
- pyarrow: the floor: `pyarrow.json.read_json` with the contract's explicit schema, the hits
  list flattened with pyarrow compute, zstd Parquet.
"""

import json
import sys
import time
from pathlib import Path


def ours(src: Path, out: Path):
    from lens_core.ingest.ndjson import ingest_to_parquet

    t0 = time.perf_counter()
    agg, hits = ingest_to_parquet([src], out / "agg.parquet", out / "hits.parquet")
    return time.perf_counter() - t0, agg.num_rows, hits.rows


def stdlib(src: Path, out: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    a = {
        k: []
        for k in (
            "run_id",
            "system",
            "cfg_hash",
            "qid",
            "suite",
            "intent",
            "language",
            "req_ts",
            "sla_ms",
            "lat_ms",
            "n_hits",
            "probes",
            "cpu_ms",
            "error",
        )
    }
    h = {
        k: []
        for k in (
            "run_id",
            "system",
            "qid",
            "rank",
            "repo",
            "path",
            "start_line",
            "end_line",
            "score",
            "why_lex",
            "why_struct",
            "why_sem",
            "shard",
        )
    }
    with open(src, "rb") as f:
        for line in f:
            obj = json.loads(line)
            if obj.get("type") == "done":
                break
            for k in (
                "run_id",
                "system",
                "cfg_hash",
                "qid",
                "suite",
                "intent",
                "language",
                "req_ts",
                "sla_ms",
                "lat_ms",
                "error",
            ):
                a[k].append(obj[k])
            a["n_hits"].append(len(obj["hits"]))
            a["probes"].append(obj["cost"]["probes"])
            a["cpu_ms"].append(obj["cost"]["cpu_ms"])
            rid, sysn, qid = obj["run_id"], obj["system"], obj["qid"]
            for hit in obj["hits"]:
                h["run_id"].append(rid)
                h["system"].append(sysn)
                h["qid"].append(qid)
                for k in ("rank", "repo", "path", "start_line", "end_line", "score", "shard"):
                    h[k].append(hit[k])
                why = hit["why"]
                h["why_lex"].append("lex" in why)
                h["why_struct"].append("struct" in why)
                h["why_sem"].append("sem" in why)
    at, ht = pa.table(a), pa.table(h)
    pq.write_table(at, out / "agg.parquet", compression="zstd")
    pq.write_table(ht, out / "hits.parquet", compression="zstd")
    return time.perf_counter() - t0, at.num_rows, ht.num_rows


def pyarrow_floor(src: Path, out: Path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as paj
    import pyarrow.parquet as pq

    from lens_core.common.contracts import RAW_RECORD_SCHEMA

    t0 = time.perf_counter()
    t = paj.read_json(
        src,
        read_options=paj.ReadOptions(block_size=1 << 24),
        parse_options=paj.ParseOptions(explicit_schema=RAW_RECORD_SCHEMA, unexpected_field_behavior="ignore"),
    )
    t = t.slice(0, t.num_rows - 1)  # the done trailer parses as an all-null row
    hits_list = t.column("hits").combine_chunks()
    parent = pc.list_parent_indices(hits_list)
    flat = pc.list_flatten(hits_list)
    cols = {
        "run_id": t.column("run_id").take(parent),
        "system": t.column("system").take(parent),
        "qid": t.column("qid").take(parent),
    }
    for name in ("rank", "repo", "path", "start_line", "end_line", "score", "shard"):
        cols[name] = flat.field(name)
    why = flat.field("why")
    why_flat = pc.list_flatten(why).to_numpy(zero_copy_only=False)
    why_parent = pc.list_parent_indices(why).to_numpy()
    for reason in ("lex", "struct", "sem"):
        hit_has = np.bincount(why_parent[why_flat == reason], minlength=len(why)) > 0
        cols[f"why_{reason}"] = pa.array(hit_has)
    ht = pa.table(cols)
    cost = t.column("cost").combine_chunks()
    at = (
        t.drop_columns(["hits", "shards", "cost"])
        .append_column("probes", cost.field("probes"))
        .append_column("cpu_ms", cost.field("cpu_ms"))
        .append_column("n_hits", pc.list_value_length(hits_list))
    )
    pq.write_table(at, out / "agg.parquet", compression="zstd")
    pq.write_table(ht, out / "hits.parquet", compression="zstd")
    return time.perf_counter() - t0, at.num_rows, ht.num_rows


def phases(src: Path, out: Path):
    """`ours` with each phase's start, end and CPU time (its thread's) recorded: where the time
    goes in a run that spreads over threads, which cProfile (main thread only) cannot show."""
    import threading

    import pyarrow.parquet as pq

    import lens_core.ingest.ndjson as ing

    t0 = time.perf_counter()
    spans: list[dict] = []

    def timed(name, fn, process_cpu=False):
        clock = time.process_time if process_cpu else time.thread_time

        def run(*a, **k):
            s, c = time.perf_counter(), clock()
            try:
                return fn(*a, **k)
            finally:
                spans.append(
                    {
                        "phase": name,
                        "thread": threading.current_thread().name,
                        "start": s - t0,
                        "end": time.perf_counter() - t0,
                        "cpu": clock() - c,
                    }
                )

        return run

    labels = {ing._DuckScan: "DuckDB typed scan (its own threads)", ing._StreamHasher: "sha256 of the file"}
    for cls, label in labels.items():
        # DuckDB's scan runs alone (the other phases start after it): the process's CPU time
        # over its span is DuckDB's, all its worker threads included
        cls.run = timed(label, cls.run, process_cpu=cls is ing._DuckScan)
    range_run = ing._RangeReader.run  # C scanner or RE2 certification: the reader's own label
    ing._RangeReader.run = lambda self: timed(f"{self.label} (one thread, ranges from a shared queue)", range_run)(self)
    ing._fast_tables = timed("flatten DuckDB's hits", ing._fast_tables)
    ing._canon_tables = timed("C scanner's columns -> Arrow tables", ing._canon_tables)
    ing._derive = timed("derive agg + hits columns", ing._derive)
    ing.pq = type(
        "pq",
        (),
        {
            "ParquetWriter": type(
                "W",
                (pq.ParquetWriter,),
                {"write_table": timed("encode + write hits Parquet", pq.ParquetWriter.write_table)},
            )
        },
    )
    ing.write_parquet = timed("write agg Parquet", ing.write_parquet)
    ing.sha256_file = timed("sha256 of the hits Parquet", ing.sha256_file)
    t0 = time.perf_counter()
    agg, hits = ing.ingest_to_parquet([src], out / "agg.parquet", out / "hits.parquet")
    return time.perf_counter() - t0, agg.num_rows, hits.rows, spans


def main() -> None:
    mode, src, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    fn = {"ours": ours, "stdlib": stdlib, "pyarrow": pyarrow_floor, "phases": phases}[mode]
    sec, na, nh, *extra = fn(src, out)
    print(json.dumps({"seconds": sec, "agg_rows": na, "hits_rows": nh, **({"phases": extra[0]} if extra else {})}))


if __name__ == "__main__":
    main()
