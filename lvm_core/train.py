"""Training, checkpoints and predictors (SPEC §12, issue 7 items 4 and 8).

- `train_variant(variant, seq, vectors, cfg)` trains one model variant (`models.VARIANTS`):
  the memory GRU with Adam and early stopping on validation Hit@5 (the best epoch's weights are
  kept), ridge with its lambda chosen on validation Hit@5, and the parameter-free baselines
  (only their validation Hit@5 is measured). Seeded; the device is chosen at run time
  (`cuda` when available, else `cpu`; `LVM_DEVICE` overrides) and the code is the same.
- Checkpoint = a torch file {format, variant, state, config, metrics, cache_key} written
  atomically, with a JSON sidecar holding its sha256; `load_checkpoint` verifies the sha256
  and raises `CheckpointError` on mismatch.
- Training cache: `checkpoint_key` hashes the data (vectors sha256 + sequences content hash),
  the variant and its training config. `ensure_checkpoint` reuses an existing checkpoint with
  that key (after verifying its sha256) instead of retraining: that is what makes a warm run
  fast. The metadata says `reused: true` then.

Why this is one module: a checkpoint is defined by the training code that wrote it. The
training config (`_gru_config`) is at once the cache key (`checkpoint_key`), what a checkpoint
stores, and what `build_predictor` needs to rebuild the model (context length, ridge delta
base). Keeping training, predictors and checkpoints together keeps those three in step under
one `CODE_VERSION`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lens_core.common.hashing import atomic_path, atomic_write_json, canonical_json, sha256_file, sha256_hex
from lvm_core import models as M
from lvm_core.ranking import Bank, candidate_counts, hits_at, target_ranks
from lvm_core.sequences import Sequences, gather, window_index
from lvm_core.settings import pick_device

log = logging.getLogger(__name__)
CKPT_FORMAT = "lvm-ckpt-v1"
CODE_VERSION = "lvm-train-5"  # bump when training code changes what a checkpoint contains


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or whose sha256 does not match."""


@dataclass
class TrainResult:
    variant: str
    state: dict
    config: dict
    metrics: dict


# ---------------------------------------------------------------------------------------------
# Predictors: one interface over all variants (numpy in, numpy out)
# ---------------------------------------------------------------------------------------------
class Predictor:
    def __init__(self, variant: str, fn: Callable[[np.ndarray], np.ndarray], device: str = "cpu"):
        self.variant, self._fn, self.device = variant, fn, device

    def predict(self, x: np.ndarray, batch: int = 1024) -> np.ndarray:
        if x.shape[0] == 0:
            return np.zeros((0, x.shape[2]), dtype=np.float32)
        return np.concatenate([self._fn(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def gru_predictor(model: M.MemoryGRU, device: str, context_len: int | None = None) -> Predictor:
    """The GRU as a predictor; it reads the last `context_len` positions of a window (all when
    None), so one set of windows serves GRUs trained at several context lengths."""
    model = model.to(device).eval()

    def fn(x: np.ndarray) -> np.ndarray:
        if context_len is not None and x.shape[1] > context_len:
            x = x[:, -context_len:]
        with torch.inference_mode():
            out = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device))
            return out.float().cpu().numpy()

    return Predictor("memory_gru", fn, device)


def build_predictor(ckpt: dict, device: str | None = None) -> Predictor:
    variant = ckpt["variant"]
    if variant == "memory_gru":
        c = ckpt["config"]
        model = M.MemoryGRU(
            dim=c["dim"],
            hidden=c["hidden"],
            memory_slots=c["memory_slots"],
            dropout=c["dropout"],
            ridge_last_k=int(c.get("ridge_last_k", 0)),
        )
        model.load_state_dict(ckpt["state"])
        return gru_predictor(model, device or pick_device(), c.get("context_len"))
    if variant == "copy_last":
        return Predictor(variant, M.copy_last)
    if variant == "mean_context":
        return Predictor(variant, M.mean_context)
    if variant == "ridge":
        return Predictor(variant, M.Ridge.from_state(ckpt["state"]).predict)
    raise CheckpointError(f"unknown model variant {variant!r}")


# ---------------------------------------------------------------------------------------------
# Validation Hit@5
# ---------------------------------------------------------------------------------------------
class SplitData:
    """Windows of one split as index arrays + its candidate bank (no (Q, L, D) copy kept: the
    contexts are gathered chunk by chunk, so a 500-sentence context fits in memory)."""

    def __init__(self, seq: Sequences, vectors: np.ndarray, split: str):
        self.start, self.target, self.lane = seq.split_rows(split)
        self.L = seq.context_len
        self.vectors = vectors
        self.bank = Bank(vectors, seq.bank_rows(split))
        self.target_idx = self.bank.index_of(self.target)
        # Per query, the candidates that are its own context sentences (excluded from ranking;
        # -1 = padding of a short context).
        ctx_rows, valid = window_index(self.start, self.target, self.L)
        self.exclude = np.full(ctx_rows.shape, -1, dtype=np.int64)
        self.exclude[valid] = self.bank.index_of(ctx_rows[valid])

    def ranks(self, preds: np.ndarray) -> np.ndarray:
        """Rank of each query's target among the bank minus the query's context sentences."""
        return target_ranks(preds, self.target_idx, self.bank.vectors, exclude=self.exclude)

    def candidate_counts(self) -> np.ndarray:
        return candidate_counts(self.bank.n, self.target_idx, self.exclude)

    def contexts(self, sl: slice | np.ndarray = slice(None)) -> np.ndarray:
        return gather(self.vectors, self.start[sl], self.L, self.target[sl])

    def predict(self, predictor: Predictor, chunk: int = 0) -> np.ndarray:
        """Every query's prediction, gathering at most ~64 MB of contexts at a time."""
        n = self.start.size
        chunk = chunk or max(64, (64 << 20) // max(1, self.L * self.vectors.shape[1] * 4))
        if n == 0:
            return np.zeros((0, self.vectors.shape[1]), dtype=np.float32)
        return np.concatenate([predictor.predict(self.contexts(slice(i, i + chunk))) for i in range(0, n, chunk)])

    def hit_rate(self, predictor: Predictor, k: int = 5) -> float:
        return float(hits_at(self.ranks(self.predict(predictor)), [k])[k].mean())


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def _gru_config(cfg: dict, dim: int) -> dict:
    t = cfg["train"]
    keys = (
        "seed",
        "hidden",
        "memory_slots",
        "epochs",
        "patience",
        "batch_size",
        "lr",
        "weight_decay",
        "dropout",
        "alpha_infonce",
        "tau",
        "soft_negatives",
        "soft_range",
        "hard_negatives",
        "hard_range",
        "negatives_per_query",
    )
    out = {k: t[k] for k in keys}
    out["context_negatives"] = bool(t.get("context_negatives", False))
    # GRU context lengths tried (each <= sequences.context_len; None = the windows' length); the
    # one with the best validation Hit@5 is kept, like ridge's lambda.
    lens = t.get("context_lens")
    out["context_lens"] = None if not lens else sorted({int(x) for x in lens})
    out["epoch_windows"] = int(t.get("epoch_windows", 0) or 0)  # 0 = every train window each epoch
    # What the GRU's delta is added to: the last context vector, or ridge's prediction (the GRU
    # then starts as ridge; epoch 0 is validated too, so early stopping can keep pure ridge).
    out["delta_base"] = str(t.get("delta_base", "last"))
    if out["delta_base"] not in ("last", "ridge"):
        raise ValueError(f"train.delta_base must be last or ridge (got {out['delta_base']!r})")
    out["lr_schedule"] = str(t.get("lr_schedule", "constant"))
    if out["lr_schedule"] not in ("constant", "cosine"):
        raise ValueError(f"train.lr_schedule must be constant or cosine (got {out['lr_schedule']!r})")
    out["dim"] = dim
    return out


def _eta(done: int, total: int, elapsed: float) -> str:
    if done <= 0 or total <= done:
        return "0s" if total <= done else "?"
    left = elapsed / done * (total - done)
    return f"{left / 60:.0f}m" if left >= 120 else f"{left:.0f}s"


def train_memory_gru(
    seq: Sequences, vectors: np.ndarray, cfg: dict, device: str | None = None, progress: bool = True
) -> TrainResult:
    """Train at each configured context length; keep the one with the best validation Hit@5."""
    dim = int(vectors.shape[1])
    c = _gru_config(cfg, dim)
    device = device or pick_device()
    lens = c["context_lens"] or [seq.context_len]
    too_long = [x for x in lens if x > seq.context_len or x < 1]
    if too_long:
        raise ValueError(
            f"train.context_lens {too_long} outside [1, sequences.context_len={seq.context_len}]: "
            "build the windows with the longest context length"
        )
    val = SplitData(seq, vectors, "val")
    runs: dict[int, tuple[dict, dict]] = {}
    ridges: dict[int, M.Ridge] = {}
    for ell in lens:
        ridge = None
        if c["delta_base"] == "ridge":  # fitted on what this GRU reads: the last `ell` sentences
            ridge = ridges[ell] = M.Ridge.from_state(fit_ridge(seq, vectors, cfg, ell).state)
        runs[ell] = _train_gru_at(seq, vectors, c | _ridge_cfg(ridge, dim), ell, val, device, progress, ridge)
    best_len = max(lens, key=lambda x: (runs[x][1]["val_hit5"], -x))
    state, metrics = runs[best_len]
    metrics = metrics | {
        "context_len": best_len,
        "by_context_len": {
            str(x): {k: runs[x][1][k] for k in ("val_hit5", "best_epoch", "epochs_run", "train_seconds")} for x in lens
        },
        "train_seconds": sum(runs[x][1]["train_seconds"] for x in lens),
    }
    return TrainResult(
        "memory_gru", state, c | _ridge_cfg(ridges.get(best_len), dim) | {"context_len": best_len}, metrics
    )


def _ridge_cfg(ridge: M.Ridge | None, dim: int) -> dict:
    if ridge is None:
        return {}
    return {"ridge_last_k": int(ridge.W.shape[0] // dim - 1), "ridge_lam": ridge.lam}


def _train_gru_at(
    seq: Sequences,
    vectors: np.ndarray,
    c: dict,
    ell: int,
    val: SplitData,
    device: str,
    progress: bool,
    ridge: M.Ridge | None = None,
) -> tuple[dict, dict]:
    """One GRU trained on the last `ell` sentences of each window, early-stopped on validation
    Hit@5 (the best epoch's weights kept). Returns (state, metrics)."""
    dim = int(vectors.shape[1])
    torch.manual_seed(c["seed"])
    gen = torch.Generator().manual_seed(c["seed"])
    model = M.MemoryGRU(dim, c["hidden"], c["memory_slots"], c["dropout"], c.get("ridge_last_k", 0))
    if ridge is not None:
        model.set_ridge(ridge)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=c["lr"], weight_decay=c["weight_decay"])
    epochs = int(c["epochs"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs) if c["lr_schedule"] == "cosine" else None
    train_start, train_target, train_lane = seq.split_rows("train")
    lanes = sorted(set(seq.articles.column("lane").to_pylist()))
    lane_code = {l: i for i, l in enumerate(lanes)}
    vec_t = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device)
    start_t = torch.from_numpy(train_start).to(device)
    target_t = torch.from_numpy(train_target).to(device)
    tlane_t = torch.tensor([lane_code[x] for x in train_lane], device=device)
    offs = torch.arange(ell, device=device) - ell  # positions target-ell .. target-1
    # Train bank for negative mining: every sentence of the train articles.
    bank_rows_np = seq.bank_rows("train")
    row_lane = np.empty(vectors.shape[0], dtype=np.int64)
    for aid_lane, first, n in zip(
        seq.articles.column("lane").to_pylist(),
        seq.articles.column("first_row").to_pylist(),
        seq.articles.column("n_sentences").to_pylist(),
    ):
        row_lane[first : first + n] = lane_code[aid_lane]
    bank_rows = torch.from_numpy(bank_rows_np).to(device)
    bank_vec = vec_t[bank_rows]
    bank_lane = torch.from_numpy(row_lane[bank_rows_np]).to(device)
    n = train_start.size
    per_epoch = min(n, c["epoch_windows"]) if c["epoch_windows"] else n
    bs = int(c["batch_size"])
    k = int(c["negatives_per_query"])
    best = (-1.0, 0, None)
    history: list[dict] = []
    if ridge is not None:  # epoch 0: the untrained model, i.e. exactly ridge
        model.eval()
        h0 = val.hit_rate(gru_predictor(model, device, ell))
        history.append({"epoch": 0, "loss": None, "val_hit5": h0})
        best = (h0, 0, copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}))
    bad_epochs = 0
    t0 = time.monotonic()
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)[:per_epoch].to(device)
        total, batches = 0.0, 0
        for i in range(0, per_epoch, bs):
            b = perm[i : i + bs]
            if b.numel() < 2:
                continue
            idx = target_t[b][:, None] + offs
            valid = idx >= start_t[b][:, None]
            xb = vec_t[idx.clamp(min=0)] * valid[:, :, None]
            yb = vec_t[target_t[b]]
            negs, masks = [], []
            if c["context_negatives"]:
                negs.append(xb[:, -1:])
                masks.append(torch.ones(b.numel(), 1, dtype=torch.bool, device=device))
            for on, rng, same_lane in (
                (c["soft_negatives"], c["soft_range"], True),
                (c["hard_negatives"], c["hard_range"], False),
            ):
                if on and k:
                    nv, nm = M.mine_negatives(
                        yb, target_t[b], tlane_t[b], bank_vec, bank_rows, bank_lane, *rng, k, same_lane, gen
                    )
                    negs.append(nv)
                    masks.append(nm)
            extra = torch.cat(negs, 1) if negs else None
            mask = torch.cat(masks, 1) if masks else None
            loss = M.lvm_loss(model(xb), yb, c["alpha_infonce"], c["tau"], extra, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += float(loss.detach())
            batches += 1
        if sched is not None:
            sched.step()
        model.eval()
        hit5 = val.hit_rate(gru_predictor(model, device, ell))
        history.append({"epoch": epoch, "loss": total / max(batches, 1), "val_hit5": hit5})
        if hit5 > best[0]:
            best = (hit5, epoch, copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}))
            bad_epochs = 0
        else:
            bad_epochs += 1
        if progress:
            el = time.monotonic() - t0
            log.info(
                "memory_gru L=%d epoch %d/%d loss %.4f val Hit@5 %.4f (best %.4f @%d) %.0fs, ETA <= %s",
                ell,
                epoch,
                epochs,
                total / max(batches, 1),
                hit5,
                best[0],
                best[1],
                el,
                _eta(epoch, epochs, el),
            )
        if bad_epochs >= int(c["patience"]):
            break
    metrics = {
        "val_hit5": best[0],
        "best_epoch": best[1],
        "epochs_run": sum(1 for h in history if h["epoch"] > 0),
        "train_windows": int(n),
        "windows_per_epoch": int(per_epoch),
        "val_windows": int(val.start.size),
        "val_candidates": val.bank.n,
        "train_seconds": time.monotonic() - t0,
        "device": device,
        "history": history,
    }
    return best[2], metrics


def fit_ridge(seq: Sequences, vectors: np.ndarray, cfg: dict, context_len: int | None = None) -> TrainResult:
    """Ridge with lambda chosen on validation Hit@5; on the last `context_len` sentences of each
    window (default: the whole window)."""
    t = cfg["train"]
    ell = seq.context_len if context_len is None else int(context_len)
    t0 = time.monotonic()
    start, target, _ = seq.split_rows("train")
    y = vectors[target]
    chunk = max(64, (64 << 20) // max(1, ell * vectors.shape[1] * 4))
    phis, lasts = [], []
    for i in range(0, start.size, chunk):  # featurise chunk by chunk: a (Q, 500, D) copy won't fit
        x = gather(vectors, start[i : i + chunk], ell, target[i : i + chunk])
        phis.append(M.ridge_features(x, int(t["ridge_last_k"])))
        lasts.append(x[:, -1])
    phi, last = np.concatenate(phis), np.concatenate(lasts)
    val = SplitData(seq, vectors, "val")
    best: tuple[float, M.Ridge | None] = (-1.0, None)
    scores = {}
    for lam in t["ridge_lambdas"]:
        r = M.Ridge(lam, t["ridge_last_k"]).fit_features(phi, last, y)
        h = val.hit_rate(Predictor("ridge", lambda x, r=r: r.predict(x[:, -ell:])))
        scores[str(lam)] = h
        if h > best[0]:
            best = (h, r)
    r = best[1]
    config = {
        "lambdas": list(t["ridge_lambdas"]),
        "last_k": t["ridge_last_k"],
        "lam": r.lam,
        "dim": int(vectors.shape[1]),
    }
    metrics = {
        "val_hit5": best[0],
        "val_hit5_by_lambda": scores,
        "train_windows": int(start.size),
        "val_candidates": val.bank.n,
        "train_seconds": time.monotonic() - t0,
    }
    return TrainResult("ridge", r.state(), config, metrics)


def train_variant(
    variant: str, seq: Sequences, vectors: np.ndarray, cfg: dict, device: str | None = None, progress: bool = True
) -> TrainResult:
    if variant == "memory_gru":
        return train_memory_gru(seq, vectors, cfg, device, progress)
    if variant == "ridge":
        return fit_ridge(seq, vectors, cfg)
    if variant in ("copy_last", "mean_context"):
        t0 = time.monotonic()
        val = SplitData(seq, vectors, "val")
        fn = M.copy_last if variant == "copy_last" else M.mean_context
        h = val.hit_rate(Predictor(variant, fn))
        return TrainResult(
            variant,
            {},
            {"dim": int(vectors.shape[1])},
            {"val_hit5": h, "val_candidates": val.bank.n, "train_seconds": time.monotonic() - t0},
        )
    raise ValueError(f"unknown model variant {variant!r}; expected one of {', '.join(M.VARIANTS)}")


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def variant_config(variant: str, cfg: dict) -> dict:
    t = cfg["train"]
    if variant == "memory_gru":
        return _gru_config(cfg, 0) | {"dim": None}
    if variant == "ridge":
        return {"lambdas": t["ridge_lambdas"], "last_k": t["ridge_last_k"]}
    return {}


def checkpoint_key(variant: str, data_hash: str, cfg: dict) -> str:
    payload = {"variant": variant, "data": data_hash, "config": variant_config(variant, cfg), "code": CODE_VERSION}
    return sha256_hex(canonical_json(payload).encode())


def save_checkpoint(
    path: str | os.PathLike, result: TrainResult, cache_key: str = "", extra_meta: dict | None = None
) -> dict:
    """Write the checkpoint atomically, then its sidecar `<path>.json` with the sha256."""
    path = Path(path)
    payload = {
        "format": CKPT_FORMAT,
        "variant": result.variant,
        "state": result.state,
        "config": result.config,
        "metrics": _jsonable(result.metrics),
        "cache_key": cache_key,
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)
        digest = sha256_file(tmp)
    meta = {
        "path": str(path),
        "sha256": digest,
        "variant": result.variant,
        "config": result.config,
        "metrics": _jsonable(result.metrics),
        "cache_key": cache_key,
        **(extra_meta or {}),
    }
    atomic_write_json(Path(f"{path}.json"), meta)
    return meta


def load_checkpoint(path: str | os.PathLike, expected_sha256: str | None = None) -> dict:
    """Load a checkpoint after verifying its sha256 (from `expected_sha256` or the sidecar)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: missing")
    if expected_sha256 is None:
        side = Path(f"{path}.json")
        if not side.is_file():
            raise CheckpointError(f"checkpoint {path}: no sidecar {side.name} with its sha256")
        expected_sha256 = json.loads(side.read_text())["sha256"]
    got = sha256_file(path)
    if got != expected_sha256:
        raise CheckpointError(
            f"checkpoint {path}: sha256 mismatch (expected {expected_sha256}, got {got}); refusing to load"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a corrupt file
        raise CheckpointError(f"checkpoint {path}: unreadable ({e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"checkpoint {path}: not an {CKPT_FORMAT} file")
    ckpt["sha256"] = got
    return ckpt


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=float))


def ensure_checkpoint(
    variant: str,
    out_dir: str | os.PathLike,
    seq: Sequences,
    vectors: np.ndarray,
    data_hash: str,
    cfg: dict,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Train `variant` unless a checkpoint with the same cache key exists (and verifies);
    point `checkpoints/<variant>/current.json` at it. Returns the checkpoint metadata."""
    out_dir = Path(out_dir)
    key = checkpoint_key(variant, data_hash, cfg)
    path = out_dir / "checkpoints" / variant / f"{key[:16]}.pt"
    meta: dict | None = None
    if path.is_file() and Path(f"{path}.json").is_file():
        try:
            load_checkpoint(path)
            meta = json.loads(Path(f"{path}.json").read_text()) | {"reused": True}
            log.info("%s: reusing checkpoint %s (same data + config hash)", variant, path.name)
        except CheckpointError as e:
            log.warning("%s: cached checkpoint unusable, retraining: %s", variant, e)
    if meta is None:
        device = device or pick_device()
        log.info("%s: training on %s", variant, device)
        result = train_variant(variant, seq, vectors, cfg, device, progress)
        meta = save_checkpoint(path, result, key, {"data_hash": data_hash}) | {"reused": False}
    meta["name"] = f"{variant}@{key[:8]}"
    atomic_write_json(out_dir / "checkpoints" / variant / "current.json", meta)
    return meta


def current_checkpoint(out_dir: str | os.PathLike, variant: str) -> dict:
    p = Path(out_dir) / "checkpoints" / variant / "current.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: missing; materialise lvm_checkpoints[{variant}] first")
    return json.loads(p.read_text())
