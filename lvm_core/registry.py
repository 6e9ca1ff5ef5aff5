"""Champion registry: `$LENS_DATA_DIR/lvm/champion.json` (SPEC §12, issue 7 item 7).

    {"champion": ENTRY | null, "history": [ENTRY + {"event", "at", ...}, ...]}
    ENTRY = {name, variant, checkpoint, sha256, eval_set, metrics: {hit1, hit5, hit10,
             hit5_ci_low, hit5_ci_high, n_queries, n_candidates, p95_ms,
             lanes: {lane: {hit5, ci_low, ci_high, n_queries}}}}

The per-lane figures let the lane check judge a later candidate against the champion's same
lane even when the champion's checkpoint is not part of that evaluation (e.g. after a rollback).

Names are `<variant>@<first 8 hex of the training cache key>`, so a checkpoint trained on the
same data with the same config keeps its name.

Promotion (`maybe_promote`): the candidate is the best model of the current evaluation (Hit@5,
lane `all`). It replaces the champion when its Hit@5 gain holds with confidence:
- paired (preferred): when both have per-query hits on the same eval set (same eval-set hash),
  a paired percentile bootstrap of the per-query difference (candidate - champion) over
  queries; promote iff the CI's lower bound is > 0.
- unpaired (fallback, e.g. the eval set changed): promote iff the candidate's Hit@5 CI lower
  bound is above the champion's recorded Hit@5.
With no champion the first candidate is promoted. In every case the candidate's p95 latency must
stay within `p95_budget_ms` (when given), or it is not promoted. `rollback(name)` restores an earlier champion
by name (it must be in the history; its checkpoint's sha256 is verified first). All writes are
atomic.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from lens_core.common.contracts import SLICE_ALL
from lens_core.common.hashing import atomic_write_json, sha256_file
from lens_core.stats.bootstrap import mean_ci

REGISTRY_FILE = "champion.json"


class RegistryError(ValueError):
    pass


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_registry(lvm_dir: str | os.PathLike) -> dict:
    p = Path(lvm_dir) / REGISTRY_FILE
    if not p.is_file():
        return {"champion": None, "history": []}
    try:
        reg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise RegistryError(f"{p}: not valid JSON (line {e.lineno}, column {e.colno})") from e
    if not isinstance(reg, dict) or "history" not in reg or "champion" not in reg:
        raise RegistryError(f"{p}: expected keys 'champion' and 'history'")
    return reg


def write_registry(lvm_dir: str | os.PathLike, reg: dict) -> None:
    atomic_write_json(Path(lvm_dir) / REGISTRY_FILE, reg)


def model_eval(table: pa.Table, summary: dict, details: dict[str, np.ndarray], variant: str, k: int = 5) -> dict:
    """Registry view of one evaluated variant: entry fields + per-query hits at k."""
    rows = {(r["k"]): r for r in table.to_pylist() if r["model"] == variant and r["lane"] == SLICE_ALL}
    if k not in rows:
        raise RegistryError(f"no lane-{SLICE_ALL} Hit@{k} row for model {variant}")
    m = summary["models"][variant]
    ranks = details.get(f"ranks__{variant}")
    lanes = {
        r["lane"]: {"hit5": r["hit"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n_queries": r["n_queries"]}
        for r in table.to_pylist()
        if r["model"] == variant and r["k"] == k and r["lane"] != SLICE_ALL
    }
    return {
        "name": m["name"],
        "variant": variant,
        "checkpoint": m["checkpoint"],
        "sha256": m["sha256"],
        "eval_set": summary["eval_set"],
        "metrics": {
            **{f"hit{kk}": rows[kk]["hit"] for kk in sorted(rows)},
            "hit5_ci_low": rows[k]["ci_low"],
            "hit5_ci_high": rows[k]["ci_high"],
            "n_queries": rows[k]["n_queries"],
            "n_candidates": rows[k]["n_candidates"],
            "p95_ms": rows[k]["p95_ms"],
            "lanes": lanes,
        },
        "hit": rows[k]["hit"],
        "ci_low": rows[k]["ci_low"],
        "ci_high": rows[k]["ci_high"],
        "per_query": None if ranks is None else (ranks <= k).astype(np.float64),
    }


def best_variant(table: pa.Table, k: int = 5) -> str:
    rows = [r for r in table.to_pylist() if r["lane"] == SLICE_ALL and r["k"] == k]
    if not rows:
        raise RegistryError("evaluation table has no lane-all rows")
    return max(rows, key=lambda r: (r["hit"], r["ci_low"], r["model"]))["model"]


def lane_paired_diffs(
    cand: dict, champ: dict | None, lanes: np.ndarray, b: int, alpha: float, seed: int = 0
) -> dict[str, tuple[float, float, float]] | None:
    """lane -> (mean, CI low, CI high) of the paired per-query Hit@5 difference candidate -
    champion, when both were scored on this eval set (else None)."""
    if champ is None or cand.get("per_query") is None or champ.get("per_query") is None:
        return None
    if cand.get("eval_set") != champ.get("eval_set") or len(cand["per_query"]) != len(champ["per_query"]):
        return None
    diff = np.asarray(cand["per_query"]) - np.asarray(champ["per_query"])
    lanes = np.asarray(lanes).astype(str)
    out = {}
    for lane in sorted(set(lanes.tolist())):
        m, lo, hi = mean_ci(diff[lanes == lane], b=b, seed=seed, alpha=alpha)
        out[lane] = (float(m[0]), float(lo[0]), float(hi[0]))
    return out


def champion_eval(reg: dict, table: pa.Table, summary: dict, details: dict, k: int = 5) -> dict | None:
    """The champion's figures: fresh (with per-query hits) when its checkpoint was part of this
    evaluation, else as recorded when it was promoted (no per-query hits)."""
    champ = reg.get("champion")
    if not champ:
        return None
    for v, m in summary["models"].items():
        if m["name"] == champ["name"] and m["sha256"] == champ["sha256"]:
            return model_eval(table, summary, details, v, k)
    return {
        **champ,
        "hit": champ["metrics"][f"hit{k}"],
        "ci_low": champ["metrics"].get("hit5_ci_low"),
        "ci_high": champ["metrics"].get("hit5_ci_high"),
        "per_query": None,
    }


def maybe_promote(
    candidate_eval: dict,
    champion_eval: dict | None,
    b: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    p95_budget_ms: float | None = None,
) -> dict:
    """Decision {promote, method, reason, diff, diff_ci_low, diff_ci_high} (module docstring)."""
    d = _gain_decision(candidate_eval, champion_eval, b, alpha, seed)
    p95 = candidate_eval.get("metrics", {}).get("p95_ms")
    if p95_budget_ms is not None and p95 is not None:
        d["p95_ms"], d["p95_budget_ms"] = float(p95), float(p95_budget_ms)
        if d["promote"] and not float(p95) <= p95_budget_ms:
            d["promote"] = False
            d["reason"] += f"; but p95 {float(p95):.3f} ms exceeds the {p95_budget_ms} ms budget: not promoted"
    return d


def _gain_decision(candidate_eval: dict, champion_eval: dict | None, b: int, alpha: float, seed: int) -> dict:
    if champion_eval is None:
        return {
            "promote": True,
            "method": "initial",
            "reason": "no champion yet",
            "diff": None,
            "diff_ci_low": None,
            "diff_ci_high": None,
        }
    if candidate_eval["name"] == champion_eval["name"]:
        return {
            "promote": False,
            "method": "same",
            "reason": f"{candidate_eval['name']} is already the champion",
            "diff": 0.0,
            "diff_ci_low": None,
            "diff_ci_high": None,
        }
    cq, hq = candidate_eval.get("per_query"), champion_eval.get("per_query")
    diff = float(candidate_eval["hit"] - champion_eval["hit"])
    if (
        cq is not None
        and hq is not None
        and len(cq) == len(hq)
        and candidate_eval.get("eval_set") == champion_eval.get("eval_set")
    ):
        _, lo, hi = mean_ci(np.asarray(cq) - np.asarray(hq), b=b, seed=seed, alpha=alpha)
        lo, hi = float(lo[0]), float(hi[0])
        ok = lo > 0
        return {
            "promote": bool(ok),
            "method": "paired_bootstrap",
            "diff": diff,
            "diff_ci_low": lo,
            "diff_ci_high": hi,
            "reason": f"Hit@5 gain {diff:+.4f}, paired {100 * (1 - alpha):.0f}% CI "
            f"[{lo:+.4f}, {hi:+.4f}] " + ("excludes 0" if ok else "includes 0"),
        }
    ok = candidate_eval["ci_low"] > champion_eval["hit"]
    return {
        "promote": bool(ok),
        "method": "ci_low_vs_hit",
        "diff": diff,
        "diff_ci_low": None,
        "diff_ci_high": None,
        "reason": f"candidate Hit@5 CI low {candidate_eval['ci_low']:.4f} "
        f"{'>' if ok else '<='} champion Hit@5 {champion_eval['hit']:.4f}",
    }


def _entry(ev: dict) -> dict:
    return {k: ev[k] for k in ("name", "variant", "checkpoint", "sha256", "eval_set", "metrics")}


def apply_decision(lvm_dir: str | os.PathLike, candidate_eval: dict, decision: dict) -> dict:
    """Record the decision: on promote the candidate becomes champion; every decision is
    appended to the history (event promote / keep). Returns the new registry."""
    reg = read_registry(lvm_dir)
    entry = _entry(candidate_eval)
    if decision["promote"]:
        prev = reg["champion"]["name"] if reg.get("champion") else None
        reg["champion"] = entry | {"promoted_at": _now(), "reason": decision["reason"]}
        reg["history"].append(entry | {"event": "promote", "at": _now(), "previous": prev, "decision": decision})
    elif decision["method"] != "same":
        reg["history"].append(
            entry | {"event": "keep", "at": _now(), "champion": reg["champion"]["name"], "decision": decision}
        )
    write_registry(lvm_dir, reg)
    return reg


def rollback(name: str, lvm_dir: str | os.PathLike) -> dict:
    """Make `name` (an earlier champion in the history) the champion again."""
    reg = read_registry(lvm_dir)
    cands = [h for h in reg["history"] if h.get("name") == name and h.get("event") in ("promote", "rollback")]
    if not cands:
        known = sorted({h["name"] for h in reg["history"] if h.get("event") in ("promote", "rollback")})
        raise RegistryError(
            f"rollback {name}: not an earlier champion in "
            f"{Path(lvm_dir) / REGISTRY_FILE} (known: {', '.join(known) or 'none'})"
        )
    target = cands[-1]
    ck = Path(target["checkpoint"])
    if not ck.is_file():
        raise RegistryError(f"rollback {name}: checkpoint {ck} is missing")
    got = sha256_file(ck)
    if got != target["sha256"]:
        raise RegistryError(
            f"rollback {name}: checkpoint {ck} sha256 mismatch (expected {target['sha256']}, got {got})"
        )
    prev = reg["champion"]["name"] if reg.get("champion") else None
    entry = {k: target[k] for k in ("name", "variant", "checkpoint", "sha256", "eval_set", "metrics")}
    reg["champion"] = entry | {"promoted_at": _now(), "reason": f"rollback from {prev}"}
    reg["history"].append(entry | {"event": "rollback", "at": _now(), "previous": prev})
    write_registry(lvm_dir, reg)
    return reg


def status(lvm_dir: str | os.PathLike) -> dict:
    reg = read_registry(lvm_dir)
    return {
        "champion": reg["champion"],
        "history": [{k: h.get(k) for k in ("event", "name", "at", "previous")} for h in reg["history"]],
    }
