"""LVM (next-concept-vector model), SPEC §12: the pure core (no Dagster import).

Modules, in pipeline order:

- `corpus`     documentation folder (reST / Markdown / HTML / man) or `pydoc_data` -> articles,
               sentences, lanes
- `vectors`    sentences -> MiniLM concept vectors (cached by corpus hash and by text hash)
- `sequences`  context windows (up to context_len earlier sentences) + next-vector targets,
               split by article (train / val / eval)
- `models`     memory-augmented GRU and the baselines (copy-last, mean-of-context, ridge)
- `train`      training with early stopping on validation Hit@5, checkpoints with sha256
- `evaluate`   Hit@1/5/10 against the whole held-out concept bank, bootstrap CIs, p95
- `checks`     drift / lane / latency / NaN checks (thresholds in `config/lvm.yaml`)
- `registry`   champion.json: promotion with CI and p95 budget, rollback by name
- `report`     report.md: models x Hit@1/5/10 (full bank, CIs), in-batch Hit@5, p95, device
- `pipeline`   `run_all(data_dir)`: the whole chain without Dagster
- `cli`        `register(subparsers)`: the `lens-eval lvm ...` commands
"""
