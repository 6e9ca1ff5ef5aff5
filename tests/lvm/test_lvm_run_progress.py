"""`lens-eval run --with-lvm` (what `make demo` calls): the LVM group in stages with one progress
line per step instead of Dagster's DEBUG event stream (issue 23)."""

import dagster as dg

from tests.lvm.test_lvm_assets import SMALL


def test_run_lvm_prints_progress_lines(data_dir, tmp_path, monkeypatch, fake_embedder, capsys):
    import lens_core.common.embeddings
    from lvm_assets.run import run_lvm

    cfg = tmp_path / "lvm_small.yaml"
    cfg.write_text(SMALL)
    monkeypatch.setenv("LVM_CONFIG", str(cfg))
    monkeypatch.setenv("LVM_CORPUS_DIR", "pydoc")
    monkeypatch.setenv("LVM_DEVICE", "cpu")
    monkeypatch.setattr(lens_core.common.embeddings, "embed_texts", fake_embedder)
    res = run_lvm(dg.DagsterInstance.ephemeral())
    out = capsys.readouterr()
    text = out.out + out.err
    assert res["success"], res.get("errors")
    assert " - DEBUG - " not in text and "STEP_SUCCESS" not in text
    for step in ("lvm_corpus", "lvm_checkpoints", "lvm_eval_scores", "lvm_champion"):
        assert any(f" ok    {step} (" in ln for ln in text.splitlines()), (step, text[-2000:])
    assert "lvm: lvm_eval_scores,lvm_champion: ok" in text
