"""Next-concept-vector models (SPEC §12, issue 7 item 4).

Every model maps a context window `x` of shape (B, L, D) (L consecutive L2-normalised sentence
vectors) to a predicted next vector (B, D), L2-normalised.

Memory-augmented GRU (`MemoryGRU`)
----------------------------------
    h_1..h_L = GRU(x_1..x_L)                       (1 layer, hidden H)
    q        = W_q h_L                             (query from the last hidden state)
    a        = softmax(q K^T / sqrt(H))            (attention over M learned memory slots)
    r        = a V                                 (memory read; K, V are M x H parameters)
    delta    = MLP([h_L ; r ; x_L])                (Linear 2H+D -> H, GELU, dropout, Linear -> D)
    y_hat    = normalize(x_L + delta)
The memory bank is a small set of learned key/value slots shared across sequences: a
content-addressable store of "typical transitions" the last state can read from. The final
layer starts at zero, so an untrained model is exactly copy-last.

Loss (`lvm_loss`), on the L2-normalised prediction:
    MSE(y_hat, y) + 0.5 * (1 - cos(y_hat, y)) + alpha * InfoNCE(y_hat, y; tau = 0.07)
InfoNCE uses the other targets of the batch as negatives, plus optional extra negatives per
query: soft negatives (same lane, cos(y, n) in [0.6, 0.8]) and hard negatives
(cos in [0.75, 0.9]) mined from the train bank (`mine_negatives`), and optionally the window's
own last context vector (`context_negatives`, off by default: evaluation removes each query's
context sentences from its candidate set, see `lvm_core.evaluate`).

Baselines: copy-last (y_hat = x_L), mean-of-context (normalize(mean x)), ridge regression in
closed form on features [x_L, x_{L-1}, ..., x_{L-k+1}, mean x] predicting the
step y - x_L (`Ridge`).

Short contexts (an article's first sentences under a long context length) arrive left-padded
with zero vectors (`lvm_core.sequences.gather`): the means skip them, the GRU reads them as
"no sentence yet".
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("memory_gru", "copy_last", "mean_context", "ridge")


class MemoryGRU(nn.Module):
    def __init__(
        self, dim: int = 384, hidden: int = 384, memory_slots: int = 32, dropout: float = 0.1, ridge_last_k: int = 0
    ):
        super().__init__()
        self.dim, self.hidden, self.memory_slots = dim, hidden, memory_slots
        # Delta base: the last context vector (default), or, with ridge_last_k > 0, a fixed ridge
        # prediction (buffers ridge_W, ridge_b, set from a fitted `Ridge`): the GRU then learns
        # a correction to ridge and starts as exactly ridge.
        self.ridge_last_k = int(ridge_last_k)
        if self.ridge_last_k:
            self.register_buffer("ridge_W", torch.zeros((self.ridge_last_k + 1) * dim, dim))
            self.register_buffer("ridge_b", torch.zeros(dim))
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.query = nn.Linear(hidden, hidden)
        self.mem_keys = nn.Parameter(torch.randn(memory_slots, hidden) / math.sqrt(hidden))
        self.mem_values = nn.Parameter(torch.randn(memory_slots, hidden) / math.sqrt(hidden))
        self.head = nn.Sequential(
            nn.Linear(2 * hidden + dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(x)
        h_last = h[:, -1]
        att = torch.softmax(self.query(h_last) @ self.mem_keys.T / math.sqrt(self.hidden), dim=-1)
        read = att @ self.mem_values
        last = x[:, -1]
        delta = self.head(torch.cat([h_last, read, last], dim=-1))
        return F.normalize(self.base(x) + delta, dim=-1)

    def base(self, x: torch.Tensor) -> torch.Tensor:
        """What the delta is added to: x_L, or the ridge prediction (unnormalised)."""
        last = x[:, -1]
        if not self.ridge_last_k:
            return last
        k = min(self.ridge_last_k, x.shape[1])
        n = ((x.abs().sum(-1) > 0).sum(1, keepdim=True)).clamp(min=1)
        parts = [x[:, -1 - i] for i in range(k)] + [torch.zeros_like(last)] * (self.ridge_last_k - k)
        feats = torch.cat(parts + [x.sum(1) / n], dim=-1)
        return last + feats @ self.ridge_W + self.ridge_b

    def set_ridge(self, ridge: "Ridge") -> None:
        k = ridge.W.shape[0] // self.dim - 1  # last_k as clipped to the window length when fitted
        if k != self.ridge_last_k:
            raise ValueError(f"ridge uses {k} last vectors, the model's base {self.ridge_last_k}")
        self.ridge_W.copy_(torch.from_numpy(ridge.W))
        self.ridge_b.copy_(torch.from_numpy(ridge.b))


def copy_last(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x[:, -1], dtype=np.float32)


def context_mean(x: np.ndarray) -> np.ndarray:
    """Mean over each window's real (non-zero, i.e. not padding) context vectors."""
    n = np.maximum((np.abs(x).sum(axis=2) > 0).sum(axis=1, keepdims=True), 1)
    return x.sum(axis=1) / n


def mean_context(x: np.ndarray) -> np.ndarray:
    m = context_mean(x)
    return (m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def ridge_features(x: np.ndarray, last_k: int) -> np.ndarray:
    """[x_L, x_{L-1}, ..., x_{L-k+1}, mean x] (k clipped to L; padding positions are zero)."""
    k = min(last_k, x.shape[1])
    parts = [x[:, -1 - i] for i in range(k)] + [context_mean(x)]
    return np.concatenate(parts, axis=1)


class Ridge:
    """Closed-form ridge regression: context features -> the step from the last context vector
    to the next one (y - x_L; intercept unpenalised). Predicting the step, like the GRU's
    delta, makes heavy shrinkage fall back to copy-last instead of to the corpus mean."""

    def __init__(self, lam: float, last_k: int = 4):
        self.lam, self.last_k = float(lam), int(last_k)
        self.W: np.ndarray | None = None
        self.b: np.ndarray | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> "Ridge":
        return self.fit_features(ridge_features(x, self.last_k), x[:, -1], y)

    def fit_features(self, phi: np.ndarray, last: np.ndarray, y: np.ndarray) -> "Ridge":
        """Fit from precomputed `ridge_features` and last context vectors (long windows are
        featurised chunk by chunk by the caller)."""
        phi = phi.astype(np.float64)
        d = y.astype(np.float64) - last.astype(np.float64)
        mu_x, mu_y = phi.mean(axis=0), d.mean(axis=0)
        a, t = phi - mu_x, d - mu_y
        gram = a.T @ a
        gram[np.diag_indices_from(gram)] += self.lam
        self.W = np.linalg.solve(gram, a.T @ t).astype(np.float32)
        self.b = (mu_y - mu_x @ self.W.astype(np.float64)).astype(np.float32)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.W is None:
            raise RuntimeError("ridge: predict before fit")
        p = x[:, -1] + ridge_features(x, self.last_k).astype(np.float32) @ self.W + self.b
        return (p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def state(self) -> dict:
        return {"W": torch.from_numpy(self.W), "b": torch.from_numpy(self.b), "lam": self.lam, "last_k": self.last_k}

    @classmethod
    def from_state(cls, st: dict) -> "Ridge":
        r = cls(st["lam"], st["last_k"])
        r.W, r.b = st["W"].numpy(), st["b"].numpy()
        return r


def info_nce(
    pred: torch.Tensor,
    target: torch.Tensor,
    tau: float = 0.07,
    extra_neg: torch.Tensor | None = None,
    extra_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE with in-batch negatives; `extra_neg` (B, M, D) adds per-query negatives
    (`extra_mask` (B, M) False = padding)."""
    logits = pred @ target.T / tau  # (B, B)
    if extra_neg is not None and extra_neg.shape[1] > 0:
        ex = torch.einsum("bd,bmd->bm", pred, extra_neg) / tau  # (B, M)
        if extra_mask is not None:
            ex = ex.masked_fill(~extra_mask, float("-inf"))
        logits = torch.cat([logits, ex], dim=1)
    labels = torch.arange(pred.shape[0], device=pred.device)
    return F.cross_entropy(logits, labels)


def lvm_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    tau: float = 0.07,
    extra_neg: torch.Tensor | None = None,
    extra_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE + 0.5 (1 - cos) + alpha InfoNCE on the L2-normalised prediction."""
    pred = F.normalize(pred, dim=-1)
    mse = F.mse_loss(pred, target)
    cos = (pred * target).sum(-1).mean()
    loss = mse + 0.5 * (1.0 - cos)
    if alpha:
        loss = loss + alpha * info_nce(pred, target, tau, extra_neg, extra_mask)
    return loss


def mine_negatives(
    target: torch.Tensor,
    target_rows: torch.Tensor,
    target_lane: torch.Tensor,
    bank: torch.Tensor,
    bank_rows: torch.Tensor,
    bank_lane: torch.Tensor,
    lo: float,
    hi: float,
    k: int,
    same_lane: bool,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to k negatives per target from `bank` with cos(target, neg) in [lo, hi] (and the same
    lane when `same_lane`), the target's own row excluded; picked at random among the
    eligible. Returns (negatives (B, k, D), mask (B, k))."""
    sims = target @ bank.T  # (B, N)
    ok = (sims >= lo) & (sims <= hi) & (bank_rows[None, :] != target_rows[:, None])
    if same_lane:
        ok &= bank_lane[None, :] == target_lane[:, None]
    noise = torch.rand(sims.shape, generator=generator, device="cpu").to(sims.device)
    score = torch.where(ok, noise, torch.full_like(noise, -1.0))
    k = min(k, bank.shape[0])
    top, idx = score.topk(k, dim=1)
    return bank[idx], top >= 0
