"""The whole code location loads, validates, and the weekly chain materialises in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl

from tests.conftest import REPO


def test_definitions_load_and_every_asset_is_documented():
    from definitions import defs

    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    assert len(keys) >= 10
    for key in keys:
        node = graph.get(key)
        assert node.owners, f"{key.to_user_string()} has no owners"
        assert node.group_name and node.group_name != "default", f"{key.to_user_string()} has no group"
        assert node.kinds, f"{key.to_user_string()} has no kinds"
        assert node.description, f"{key.to_user_string()} has no description"


def test_dagster_definitions_validate_cli():
    exe = Path(sys.executable).with_name("dagster")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [str(exe), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def test_weekly_chain_materialises_one_partition(data_dir):
    from lens_assets.run import run_weekly
    from lens_core.publish.bundle import verify

    res = run_weekly("2026-11-15", queries_per_suite=40)
    assert res["success"], res.get("errors")
    bundle = Path(res["bundle"])
    for name in (
        "agg.parquet",
        "hits.parquet",
        "pool.parquet",
        "pool_counts_by_system.csv",
        "qrels.parquet",
        "per_query.parquet",
        "scores.parquet",
        "tables/hero_span_v22.csv",
        "attestation.json",
    ):
        assert (bundle / name).is_file(), name
    att = json.loads((bundle / "attestation.json").read_text())
    assert att["fingerprint"] == bundle.name and att["fingerprint"].startswith("v22_")
    assert set(att["artifacts"]) >= {"agg.parquet", "tables/hero_span_v22.csv"}
    assert att["raw_runs"] and all(len(v) == 64 for v in att["raw_runs"].values())
    assert {g["name"] for g in att["gates"]} >= {"schema", "pool", "flatline", "file_credit"}
    pq = pl.read_parquet(bundle / "per_query.parquet")
    assert pq.columns == [
        "run_id",
        "system",
        "qid",
        "suite",
        "intent",
        "language",
        "lat_ms",
        "ndcg_10",
        "recall_50",
        "sla_recall_50",
        "mrr_10",
        "success_1",
        "success_5",
        "success_10",
    ]
    assert pl.read_csv(bundle / "pool_counts_by_system.csv").columns == [
        "system",
        "contributed",
        "unique_contributed",
        "judged_share",
    ]
    sc = pl.read_parquet(bundle / "scores.parquet")
    assert sc.columns == ["system", "slice", "metric", "mean", "ci_low", "ci_high", "n"]
    assert {"all", "intent=nl", "language=python", "suite=codesearch_nl"} <= set(sc["slice"].unique())
    if res["published"]:
        pub = json.loads((data_dir / "published.json").read_text())
        assert pub["fingerprint"] == att["fingerprint"]
    assert verify(bundle) == []
