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
from lvm_core.sequences import Sequences, gather
from lvm_core.settings import pick_device

log = logging.getLogger(__name__)
CKPT_FORMAT = "lvm-ckpt-v1"
CODE_VERSION = "lvm-train-4"  # bump when training code changes what a checkpoint contains


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


def gru_predictor(model: M.MemoryGRU, device: str) -> Predictor:
    model = model.to(device).eval()

    def fn(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device))
            return out.float().cpu().numpy()

    return Predictor("memory_gru", fn, device)


def build_predictor(ckpt: dict, device: str | None = None) -> Predictor:
    variant = ckpt["variant"]
    if variant == "memory_gru":
        c = ckpt["config"]
        model = M.MemoryGRU(dim=c["dim"], hidden=c["hidden"], memory_slots=c["memory_slots"], dropout=c["dropout"])
        model.load_state_dict(ckpt["state"])
        return gru_predictor(model, device or pick_device())
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
    """Windows of one split as index arrays + its candidate bank (no (Q, L, D) copy kept)."""

    def __init__(self, seq: Sequences, vectors: np.ndarray, split: str):
        self.start, self.target, self.lane = seq.split_rows(split)
        self.L = seq.context_len
        self.vectors = vectors
        self.bank = Bank(vectors, seq.bank_rows(split))
        self.target_idx = self.bank.index_of(self.target)
        # Per query, the candidates that are its own context sentences (excluded from ranking).
        ctx_rows = self.start[:, None] + np.arange(self.L)[None, :]
        self.exclude = self.bank.index_of(ctx_rows.reshape(-1)).reshape(ctx_rows.shape)

    def ranks(self, preds: np.ndarray) -> np.ndarray:
        """Rank of each query's target among the bank minus the query's context sentences."""
        return target_ranks(preds, self.target_idx, self.bank.vectors, exclude=self.exclude)

    def candidate_counts(self) -> np.ndarray:
        return candidate_counts(self.bank.n, self.target_idx, self.exclude)

    def contexts(self, sl: slice | np.ndarray = slice(None)) -> np.ndarray:
        return gather(self.vectors, self.start[sl], self.L)

    def hit_rate(self, predictor: Predictor, k: int = 5) -> float:
        preds = predictor.predict(self.contexts())
        return float(hits_at(self.ranks(preds), [k])[k].mean())


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
    out["dim"] = dim
    return out


def train_memory_gru(
    seq: Sequences, vectors: np.ndarray, cfg: dict, device: str | None = None, progress: bool = True
) -> TrainResult:
    dim = int(vectors.shape[1])
    c = _gru_config(cfg, dim)
    device = device or pick_device()
    torch.manual_seed(c["seed"])
    gen = torch.Generator().manual_seed(c["seed"])
    model = M.MemoryGRU(dim, c["hidden"], c["memory_slots"], c["dropout"]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=c["lr"], weight_decay=c["weight_decay"])
    train_start, train_target, train_lane = seq.split_rows("train")
    lanes = sorted(set(seq.articles.column("lane").to_pylist()))
    lane_code = {l: i for i, l in enumerate(lanes)}
    vec_t = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device)
    start_t = torch.from_numpy(train_start).to(device)
    target_t = torch.from_numpy(train_target).to(device)
    tlane_t = torch.tensor([lane_code[x] for x in train_lane], device=device)
    offs = torch.arange(seq.context_len, device=device)
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
    val = SplitData(seq, vectors, "val")
    n = train_start.size
    bs = int(c["batch_size"])
    best = (-1.0, 0, None)
    history: list[dict] = []
    bad_epochs = 0
    t0 = time.monotonic()
    for epoch in range(1, int(c["epochs"]) + 1):
        model.train()
        perm = torch.randperm(n, generator=gen).to(device)
        total, batches = 0.0, 0
        for i in range(0, n, bs):
            b = perm[i : i + bs]
            if b.numel() < 2:
                continue
            xb = vec_t[start_t[b][:, None] + offs]
            yb = vec_t[target_t[b]]
            negs, masks = [], []
            if c["context_negatives"]:
                negs.append(xb[:, -1:])
                masks.append(torch.ones(b.numel(), 1, dtype=torch.bool, device=device))
            k = int(c["negatives_per_query"])
            if c["soft_negatives"] and k:
                nv, nm = M.mine_negatives(
                    yb, target_t[b], tlane_t[b], bank_vec, bank_rows, bank_lane, *c["soft_range"], k, True, gen
                )
                negs.append(nv)
                masks.append(nm)
            if c["hard_negatives"] and k:
                nv, nm = M.mine_negatives(
                    yb, target_t[b], tlane_t[b], bank_vec, bank_rows, bank_lane, *c["hard_range"], k, False, gen
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
        model.eval()
        hit5 = val.hit_rate(gru_predictor(model, device))
        history.append({"epoch": epoch, "loss": total / max(batches, 1), "val_hit5": hit5})
        if progress:
            log.info(
                "memory_gru epoch %d loss %.4f val Hit@5 %.4f (%.1fs)",
                epoch,
                total / max(batches, 1),
                hit5,
                time.monotonic() - t0,
            )
        if hit5 > best[0]:
            best = (hit5, epoch, copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}))
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= int(c["patience"]):
                break
    metrics = {
        "val_hit5": best[0],
        "best_epoch": best[1],
        "epochs_run": len(history),
        "train_windows": int(n),
        "val_windows": int(val.start.size),
        "val_candidates": val.bank.n,
        "train_seconds": time.monotonic() - t0,
        "device": device,
        "history": history,
    }
    return TrainResult("memory_gru", best[2], c, metrics)


def fit_ridge(seq: Sequences, vectors: np.ndarray, cfg: dict) -> TrainResult:
    t = cfg["train"]
    t0 = time.monotonic()
    start, target, _ = seq.split_rows("train")
    x, y = gather(vectors, start, seq.context_len), vectors[target]
    val = SplitData(seq, vectors, "val")
    best: tuple[float, M.Ridge | None] = (-1.0, None)
    scores = {}
    for lam in t["ridge_lambdas"]:
        r = M.Ridge(lam, t["ridge_last_k"]).fit(x, y)
        h = val.hit_rate(Predictor("ridge", r.predict))
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
