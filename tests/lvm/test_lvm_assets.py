"""The Dagster layer: definitions load, and the whole lvm group materialises in-process on a
small capped pydoc corpus (fake hash-seeded embeddings: the MiniLM model is not loaded)."""

import json

import dagster as dg
import pyarrow.parquet as pq

from lens_core.common.contracts import LVM_EVAL_SCHEMA
from lvm_core.models import VARIANTS

SMALL = """
corpus: {max_sentences: 900}
sequences: {context_len: 4, min_eval_candidates: 0}
train: {hidden: 32, memory_slots: 4, epochs: 2, patience: 2, negatives_per_query: 2}
eval: {bootstrap_b: 200, latency_queries: 20}
checks: {p95_ms: 1000.0}
registry: {bootstrap_b: 200}
"""


def test_definitions_load():
    from lvm_assets import defs

    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("lvm_job")
    assert job.name == "lvm_job"
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {
        "lvm_corpus",
        "lvm_concept_vectors",
        "lvm_sequences",
        "lvm_checkpoints",
        "lvm_eval_scores",
        "lvm_champion",
    } <= keys


def test_materialise_lvm_group(data_dir, tmp_path, monkeypatch, fake_embedder):
    import lens_core.common.embeddings
    from lvm_assets import LVM_ASSETS, LVM_CHECKS

    cfg = tmp_path / "lvm_small.yaml"
    cfg.write_text(SMALL)
    monkeypatch.setenv("LVM_CONFIG", str(cfg))
    monkeypatch.setenv("LVM_CORPUS_DIR", "pydoc")
    monkeypatch.setenv("LVM_DEVICE", "cpu")
    monkeypatch.setattr(lens_core.common.embeddings, "embed_texts", fake_embedder)
    everything = [*LVM_ASSETS, *LVM_CHECKS]
    instance = dg.DagsterInstance.ephemeral()

    def run(sel, key=None):
        res = dg.materialize(everything, selection=sel, partition_key=key, instance=instance)
        assert res.success
        return res

    res = run(["lvm_corpus", "lvm_concept_vectors", "lvm_sequences"])
    checks = res.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks)  # leakage check
    for v in VARIANTS:
        run(["lvm_checkpoints"], key=v)
    res = run(["lvm_eval_scores", "lvm_champion"])
    evals = {c.check_name: c for c in res.get_asset_check_evaluations()}
    assert {"lvm_hit5_drift", "lvm_lane_health", "lvm_p95_latency", "lvm_nan_predictions"} <= set(evals)
    assert evals["lvm_nan_predictions"].passed

    lvm = data_dir / "lvm"
    table = pq.read_table(lvm / "eval_scores.parquet")
    assert table.schema.equals(LVM_EVAL_SCHEMA)
    assert set(table.column("model").to_pylist()) == set(VARIANTS)
    assert "all" in set(table.column("lane").to_pylist())
    summary = json.loads((lvm / "eval_summary.json").read_text())
    assert all(m["inbatch"]["batch_size"] == 16 and "hit5" in m["inbatch"] for m in summary["models"].values())
    assert "Hit@5 in-batch (16)" in (lvm / "report.md").read_text()
    champ = json.loads((lvm / "champion.json").read_text())
    assert champ["champion"]["name"].split("@")[0] in VARIANTS
    assert len(champ["history"]) == 1

    # Warm: a second run of the checkpoints reuses them (same data + config hash).
    res = run(["lvm_checkpoints"], key="memory_gru")
    mat = res.get_asset_materialization_events()[0].event_specific_data.materialization
    assert mat.metadata["reused"].value is True
