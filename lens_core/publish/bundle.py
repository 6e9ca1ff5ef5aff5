"""Bundles, attestation, publication and verification (SPEC §10).

A bundle is assembled in a temporary directory beside `bundles/` and renamed into place in
one step, so a reader sees either no bundle or a complete one. `published.json` moves (atomic
rename, under a lock) only when every blocking gate passed; otherwise the last green bundle
stays published and the caller pages the owner.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl

from lens_core.common.contracts import (
    BUNDLE_FILES,
    FINGERPRINT_PREFIX,
    PER_QUERY_METRICS,
    PER_QUERY_SCHEMA,
    PUBLISHED_POINTER,
)
from lens_core.common.hashing import atomic_write_json, content_hash, fingerprint, sha256_file
from lens_core.decide.gates import GateResult
from lens_core.measures.metrics import per_query_metrics

KEY_PACKAGES = ("dagster", "polars", "pyarrow", "duckdb", "numpy", "scipy", "scikit-learn", "torch")
VERIFY_TOLERANCE = 0.001  # ±0.1 pp


@dataclass
class BundleResult:
    fingerprint: str
    path: Path
    published: bool
    attestation: dict[str, Any]
    previous_published: str | None = None
    failed_blocking: list[str] = field(default_factory=list)


def code_version(repo_dir: Path | None = None) -> str:
    repo_dir = repo_dir or Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo_dir), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo_dir), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        try:
            return "lens-pipeline " + metadata.version("lens-pipeline")
        except metadata.PackageNotFoundError:
            return "unknown"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in KEY_PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


@contextlib.contextmanager
def _publish_lock(data_dir: Path):
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".publish.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_published(data_dir: Path) -> dict[str, Any] | None:
    p = Path(data_dir) / PUBLISHED_POINTER
    if not p.is_file():
        return None
    return json.loads(p.read_text())


def assemble(
    data_dir: Path,
    files: dict[str, Path],
    raw_runs: list[dict[str, Any]],
    cfg_hashes: dict[str, str],
    gates: list[GateResult],
    data_source: dict[str, Any],
    extra: dict[str, Any] | None = None,
    extra_dirs: dict[str, Path] | None = None,
    now_ms: int | None = None,
) -> BundleResult:
    """Copy the tables into a new bundle, attest it, and publish it if every blocking gate passed.

    `files` maps BUNDLE_FILES keys (or extra relative names ending in a known suffix) to
    source paths; `raw_runs` lists {path (relative to data_dir), sha256}.
    """
    data_dir = Path(data_dir)
    bundles = data_dir / "bundles"
    bundles.mkdir(parents=True, exist_ok=True)
    tmp = bundles / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        artifacts: dict[str, str] = {}
        for key, src in files.items():
            rel = BUNDLE_FILES.get(key, key)
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if key == "per_query":
                # The bundle holds exactly the SPEC §10 columns.
                pl.read_parquet(src).select([f.name for f in PER_QUERY_SCHEMA]).write_parquet(dst, compression="zstd")
            else:
                shutil.copyfile(src, dst)
        for rel_dir, src_dir in (extra_dirs or {}).items():
            shutil.copytree(src_dir, tmp / rel_dir)
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                artifacts[p.relative_to(tmp).as_posix()] = sha256_file(p)
        raw = {r["path"]: r["sha256"] for r in raw_runs}
        facts = {
            "cfg_hashes": dict(sorted(cfg_hashes.items())),
            "raw_runs": dict(sorted(raw.items())),
            "data_source": data_source,
            **(extra or {}),
        }
        csha = content_hash(artifacts, facts)
        epoch_ms = int(now_ms if now_ms is not None else time.time() * 1000)
        fp = fingerprint(csha, epoch_ms, FINGERPRINT_PREFIX)
        failed = [g.name + (f"[{g.subject}]" if g.subject else "") for g in gates if g.blocking and not g.passed]
        att = {
            "fingerprint": fp,
            "content_sha256": csha,
            "created_ms": epoch_ms,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_ms / 1000)),
            "artifacts": dict(sorted(artifacts.items())),
            "raw_runs": dict(sorted(raw.items())),
            "cfg_hashes": dict(sorted(cfg_hashes.items())),
            "code_version": code_version(),
            "versions": package_versions(),
            "data_source": data_source,
            "gates": [g.attestation() for g in gates],
            "all_blocking_green": not failed,
            "extra_keys": sorted(extra or {}),
            **(extra or {}),
        }
        atomic_write_json(tmp / BUNDLE_FILES["attestation"], att)
        final = bundles / fp
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with _publish_lock(data_dir):
        prev = read_published(data_dir)
        published = not failed
        if published:
            atomic_write_json(
                data_dir / PUBLISHED_POINTER,
                {
                    "fingerprint": fp,
                    "bundle": f"bundles/{fp}",
                    "published_ms": epoch_ms,
                    "previous": prev["fingerprint"] if prev else None,
                },
            )
    return BundleResult(
        fingerprint=fp,
        path=final,
        published=published,
        attestation=att,
        previous_published=prev["fingerprint"] if prev else None,
        failed_blocking=failed,
    )


def verify(bundle_dir: Path, data_dir: Path | None = None, tolerance: float = VERIFY_TOLERANCE) -> list[str]:
    """Re-hash every artifact and re-score the hero table from the bundle's own tables.

    Returns the list of problems (empty when the bundle holds).
    """

    bundle_dir = Path(bundle_dir)
    problems: list[str] = []
    att_path = bundle_dir / BUNDLE_FILES["attestation"]
    if not att_path.is_file():
        return [f"{att_path}: missing attestation"]
    try:
        att = json.loads(att_path.read_text())
    except json.JSONDecodeError as e:
        return [f"{att_path}: not valid JSON ({e})"]
    artifacts: dict[str, str] = att.get("artifacts", {})
    # site/ is rendered from the attested files after attestation (it shows the fingerprint),
    # so it cannot itself be attested; everything else on disk must be.
    on_disk = {
        p.relative_to(bundle_dir).as_posix()
        for p in bundle_dir.rglob("*")
        if p.is_file() and p.name != BUNDLE_FILES["attestation"] and p.relative_to(bundle_dir).parts[0] != "site"
    }
    for rel in sorted(on_disk - set(artifacts)):
        problems.append(f"{rel}: file not in the attestation")
    for rel, want in sorted(artifacts.items()):
        p = bundle_dir / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif (got := sha256_file(p)) != want:
            problems.append(f"{rel}: sha256 {got[:12]}… != attested {want[:12]}…")
    data_dir = Path(data_dir) if data_dir else bundle_dir.parent.parent
    for rel, want in sorted(att.get("raw_runs", {}).items()):
        p = data_dir / rel
        if p.is_file() and (got := sha256_file(p)) != want:
            problems.append(f"{rel}: raw run sha256 {got[:12]}… != attested {want[:12]}…")
    facts = {
        "cfg_hashes": att.get("cfg_hashes", {}),
        "raw_runs": att.get("raw_runs", {}),
        "data_source": att.get("data_source"),
    }
    facts.update({k: att[k] for k in att.get("extra_keys", []) if k in att})
    csha = content_hash(artifacts, facts)
    if csha != att.get("content_sha256"):
        problems.append("attestation: content hash does not match its artifacts (attestation edited?)")
    fp = att.get("fingerprint", "")
    if not fp.startswith(f"{FINGERPRINT_PREFIX}_{csha[:8]}_"):
        problems.append(f"attestation: fingerprint {fp} does not match content hash {csha[:8]}")
    if bundle_dir.name != fp:
        problems.append(f"bundle directory {bundle_dir.name} != fingerprint {fp}")
    if problems:
        return problems
    # Re-score from the bundle's own agg / hits / qrels.
    try:
        agg = pl.read_parquet(bundle_dir / BUNDLE_FILES["agg"])
        hits = pl.read_parquet(bundle_dir / BUNDLE_FILES["hits"])
        qrels = pl.read_parquet(bundle_dir / BUNDLE_FILES["qrels"])
        queries = (
            pl.read_parquet(bundle_dir / "queries.parquet") if (bundle_dir / "queries.parquet").is_file() else None
        )
        hero = pl.read_csv(bundle_dir / BUNDLE_FILES["hero_table"])
    except Exception as e:  # noqa: BLE001 - any unreadable table is a verification failure
        return [f"cannot read bundle tables: {e}"]
    pq = per_query_metrics(agg, hits, qrels, queries=queries)
    means = pq.group_by("system").agg([pl.col(m).mean() for m in PER_QUERY_METRICS])
    joined = hero.join(means, on="system", how="full", suffix="_rescored")
    for r in joined.iter_rows(named=True):
        sys_name = r.get("system") or r.get("system_rescored")
        for m in PER_QUERY_METRICS:
            if m not in hero.columns:
                continue
            a, b = r.get(m), r.get(f"{m}_rescored")
            if a is None or b is None:
                problems.append(f"hero table: {sys_name} {m}: missing on one side")
            elif abs(a - b) > tolerance:
                problems.append(f"hero table: {sys_name} {m} = {a:.4f}, re-scored {b:.4f} (|Δ| > {tolerance})")
    return problems
