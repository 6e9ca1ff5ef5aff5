"""Bundles, attestation, publication and verification (SPEC §10).

A bundle is assembled in a temporary directory beside `bundles/` and renamed into place in
one step, so a reader sees either no bundle or a complete one; the temporaries of a killed
assembly (`bundles/.tmp-p<pid>_…`) are removed by the next one. Publication (only when every
blocking gate passed, and never backwards to an older partition unless allowed) writes the
pointer into a fresh site directory and swaps the `site` symlink to it in one rename;
`published.json` is a symlink to `site/published.json`, so the pointer and the served site
move together (issue 18). Otherwise the last green bundle stays published and the caller
pages the owner.

With `LENS_DATA_DIR=s3://bucket/prefix` (`lens_core.common.objectstore`) the bucket is the system
of record and the local data dir its working copy: the assembled bundle is uploaded objects first
and its manifest (`attestation.json`) last; the publication decision reads the bucket's
`published.json` (and its ETag), and the pointer is written there last of all with a conditional
PUT (`If-Match` the ETag read, `If-None-Match: *` when there was none). A publisher that loses
re-reads the pointer, decides again (the older-partition rule included) and retries, up to
`PUBLISH_ATTEMPTS` times; a crash at any point leaves `published.json` at the previous bundle.

The attestation's content hash covers every field of the attestation (all but the hash itself,
the fingerprint derived from it and `artifacts`, hashed as pairs); `verify` re-hashes every
artifact inside the bundle, re-derives what can be re-derived (all_blocking_green, gates
against tables/gates.csv, per_query, scores, the hero table, comparison deltas) and checks the
attested raw runs under the data dir.

Why this is one module: assembling, publishing and verifying share one definition of what a
bundle attests (`attested_facts`, the artifact set, the pointer), and verify must re-derive
exactly what assemble wrote; split apart, the two halves could drift without a test noticing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import polars as pl

from lens_core.common import objectstore
from lens_core.common.contracts import (
    BUNDLE_FILES,
    FINGERPRINT_PREFIX,
    PER_QUERY_METRICS,
    PER_QUERY_SCHEMA,
    PUBLISHED_POINTER,
)
from lens_core.common.hashing import (
    atomic_write_json,
    content_hash,
    fingerprint,
    pid_alive,
    pid_tag,
    sha256_file,
    swap_symlink,
    sweep_orphans,
)
from lens_core.decide.battery import primary_comparisons
from lens_core.decide.gates import (
    GateResult,
    calibration_parity_gate,
    cost_gate,
    decision_gates,
    ece_gate,
    file_credit_gate,
    flatline_gate,
    pool_gate,
    sla_recall_gate,
    tail_gate,
)
from lens_core.measures.metrics import per_query_metrics
from lens_core.measures.scoring import MEAN_METRICS, score, slices
from lens_core.stats.compare import compare, decision_seed

KEY_PACKAGES = ("dagster", "polars", "pyarrow", "duckdb", "numpy", "scipy", "scikit-learn", "torch")
VERIFY_TOLERANCE = 0.001  # ±0.1 pp
ATTESTATION_SCHEME = 2  # 2: every field under the content hash (issue 18)
# Fields of the attestation outside `attested_facts`: the hash, what is derived from it, and the
# artifacts (hashed as (name, sha256) pairs by `content_hash`).
_NOT_FACTS = ("content_sha256", "fingerprint", "artifacts")
SITE_DIR = "site"
ALLOW_OLDER_ENV = "LENS_ALLOW_OLDER"
PUBLISH_ATTEMPTS = 5  # conditional writes of the bucket's published.json before giving up


@dataclass
class BundleResult:
    fingerprint: str
    path: Path
    published: bool
    attestation: dict[str, Any]
    previous_published: str | None = None
    failed_blocking: list[str] = field(default_factory=list)
    # set when every blocking gate passed but the partition is older than the published one
    refused_older: str | None = None


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
        with contextlib.suppress(metadata.PackageNotFoundError):  # not installed: not listed
            out[p] = metadata.version(p)
    return out


@contextlib.contextmanager
def _flock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def publish_lock(data_dir: Path):
    return _flock(Path(data_dir) / ".publish.lock")


def partition_lock(data_dir: Path, partition: str):
    """Serialise the runs of one partition (issue 18): a file lock `locks/run-<partition>.lock`
    under the data dir, held for the whole run; a second run of the same week waits for it."""
    base = _lock_base(data_dir, partition)
    return _flock(base.with_name(base.name + ".lock"))


def _lock_base(data_dir: Path, partition: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(partition))
    return Path(data_dir) / "locks" / f"run-{safe}"


class PartitionBusy(RuntimeError):
    """Another live run holds the partition's lease (`acquire_partition_lease`)."""


def lease_owner(run_id: str) -> dict[str, Any]:
    """The lease record of a run executing in this process."""
    return {"run_id": run_id, "pid": os.getpid(), "host": platform.node(), "since_ms": int(time.time() * 1000)}


def owner_process_alive(owner: dict[str, Any]) -> bool:
    """The lease owner's process still exists (on this host; one on another host counts as alive)."""
    if owner.get("host") != platform.node():
        return True
    pid = owner.get("pid")
    return isinstance(pid, int) and pid_alive(pid)


def read_partition_lease(data_dir: Path, partition: str) -> dict[str, Any] | None:
    p = _lock_base(data_dir, partition).with_name(_lock_base(data_dir, partition).name + ".lease.json")
    try:
        cur = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return cur if isinstance(cur, dict) else None


def acquire_partition_lease(
    data_dir: Path,
    partition: str,
    owner: dict[str, Any],
    is_live: Callable[[dict[str, Any]], bool],
    wait_s: float,
    poll_s: float = 1.0,
    on_wait: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any] | None:
    """Take the lease of `partition` for `owner` (`lease_owner`): a record
    `locks/run-<partition>.lease.json`, read and written under the flock of
    `locks/run-<partition>.lease.lock`. A lease survives its step: unlike `partition_lock`
    (a flock held by one process), it spans the steps of a run, which may be separate processes.
    It is free when absent, held by the same run (a retried step), or its holder is not live
    (`is_live(holder)` false: the caller asks its run storage; a finished or failed run frees
    it). Otherwise wait (`on_wait(holder)` once per holder) up to `wait_s`, then raise
    `PartitionBusy` naming the holder. Returns the stale holder it replaced, if any."""
    base = _lock_base(data_dir, partition)
    path = base.with_name(base.name + ".lease.json")
    deadline = time.monotonic() + max(0.0, wait_s)
    told: str | None = None
    while True:
        with _flock(base.with_name(base.name + ".lease.lock")):
            cur = read_partition_lease(data_dir, partition)
            if cur is None or cur.get("run_id") == owner["run_id"] or not is_live(cur):
                atomic_write_json(path, owner)
                return cur if cur is not None and cur.get("run_id") != owner["run_id"] else None
        if time.monotonic() >= deadline:
            raise PartitionBusy(
                f"partition {partition} is held by run {cur.get('run_id')} (pid {cur.get('pid')}, since "
                f"{_utc(int(cur.get('since_ms') or 0))}): this run waited {wait_s:g}s and does not start"
            )
        if on_wait is not None and told != cur.get("run_id"):
            told = cur.get("run_id")
            on_wait(cur)
        time.sleep(poll_s)


def release_partition_lease(data_dir: Path, partition: str, run_id: str) -> bool:
    """Give the lease back when `run_id` holds it (True); another run's lease is left alone."""
    base = _lock_base(data_dir, partition)
    with _flock(base.with_name(base.name + ".lease.lock")):
        cur = read_partition_lease(data_dir, partition)
        if cur is None or cur.get("run_id") != run_id:
            return False
        base.with_name(base.name + ".lease.json").unlink(missing_ok=True)
        return True


class PublishConflict(RuntimeError):
    """Every conditional write of the bucket's published.json lost to another publisher."""


def read_published(data_dir: Path) -> dict[str, Any] | None:
    """The published pointer: the bucket's `published.json` with an s3:// data dir (the system of
    record), else the data dir's."""
    remote = objectstore.store_for(Path(data_dir) / PUBLISHED_POINTER)
    if remote is not None:
        return _remote_pointer(*remote)[0]
    p = Path(data_dir) / PUBLISHED_POINTER
    if not p.is_file():
        return None
    return json.loads(p.read_text())


def _remote_pointer(store: objectstore.S3Store, rel: str) -> tuple[dict[str, Any] | None, str | None]:
    """(pointer, ETag) of the bucket's published.json; (None, None) when there is none."""
    got = store.get_bytes(rel)
    if got is None:
        return None, None
    try:
        ptr = json.loads(got[0])
    except (UnicodeDecodeError, ValueError):
        raise objectstore.ObjectStoreError(f"{store.where(rel)}: not valid JSON (refused)") from None
    if not isinstance(ptr, dict) or not isinstance(ptr.get("fingerprint"), str):
        raise objectstore.ObjectStoreError(f"{store.where(rel)}: not a published pointer (refused)")
    return ptr, got[1]


def attested_facts(att: dict[str, Any]) -> dict[str, Any]:
    """Every field of an attestation that its content hash covers besides the artifacts."""
    return {k: v for k, v in att.items() if k not in _NOT_FACTS}


def allow_older_default() -> bool:
    """`lens-eval run --allow-older` (or LENS_ALLOW_OLDER=1): publish a partition older than the
    published one."""
    return os.environ.get(ALLOW_OLDER_ENV, "0").strip().lower() in {"1", "true", "yes"}


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
    render_site: Callable[[Path, Path], None] | None = None,
    allow_older: bool | None = None,
) -> BundleResult:
    """Copy the tables into a new bundle, attest it, and publish it if every blocking gate passed
    (and its partition, `extra["partition"]`, is not older than the published one, unless
    `allow_older`).

    `files` maps BUNDLE_FILES keys (or extra relative names ending in a known suffix) to
    source paths; `raw_runs` lists {path (relative to data_dir), sha256}. `render_site(bundle,
    out_dir)` renders the served site into the new site directory that publication swaps in.
    """
    data_dir = Path(data_dir)
    bundles = data_dir / "bundles"
    bundles.mkdir(parents=True, exist_ok=True)
    sweep_orphans(bundles, ".tmp-")  # what a killed assembly left
    tmp = bundles / f".tmp-{pid_tag()}{os.urandom(8).hex()}"
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
            if Path(src_dir).is_dir():
                shutil.copytree(src_dir, tmp / rel_dir)
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                artifacts[p.relative_to(tmp).as_posix()] = sha256_file(p)
        raw = {r["path"]: r["sha256"] for r in raw_runs}
        epoch_ms = int(now_ms if now_ms is not None else time.time() * 1000)
        failed = [g.name + (f"[{g.subject}]" if g.subject else "") for g in gates if g.blocking and not g.passed]
        att: dict[str, Any] = {
            "attestation_scheme": ATTESTATION_SCHEME,
            "created_ms": epoch_ms,
            "created_utc": _utc(epoch_ms),
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
        csha = content_hash(artifacts, attested_facts(att))
        fp = fingerprint(csha, epoch_ms, FINGERPRINT_PREFIX)
        att = {"fingerprint": fp, "content_sha256": csha, "artifacts": dict(sorted(artifacts.items())), **att}
        atomic_write_json(tmp / BUNDLE_FILES["attestation"], att)
        final = bundles / fp
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    partition = (extra or {}).get("partition")
    allow_older = allow_older_default() if allow_older is None else allow_older
    remote = objectstore.store_for(data_dir / PUBLISHED_POINTER)
    if remote is not None:  # the bundle's objects first, its manifest (attestation.json) last
        remote[0].put_tree(final, f"bundles/{fp}", last=BUNDLE_FILES["attestation"])
    with publish_lock(data_dir):
        local_moved = False
        for _ in range(PUBLISH_ATTEMPTS):
            prev, etag = _remote_pointer(*remote) if remote is not None else (read_published(data_dir), None)
            published, refused_older = _may_publish(failed, partition, prev, allow_older)
            if not published:
                break
            pointer = {
                "fingerprint": fp,
                "bundle": f"bundles/{fp}",
                "published_ms": epoch_ms,
                "partition": partition,
                "previous": prev["fingerprint"] if prev else None,
            }
            publish_pointer(data_dir, pointer, final, render_site)
            if remote is None:
                break
            local_moved = True
            try:  # last of all: the bucket's pointer, only over the one this decision read
                store, rel = remote
                store.put_bytes(rel, (data_dir / PUBLISHED_POINTER).read_bytes(), if_match=etag, if_none_match=not etag)
                break
            except objectstore.PreconditionFailed:
                continue  # another publisher won in between: read again, decide again
        else:
            _follow_remote(data_dir, remote, render_site)
            raise PublishConflict(
                f"{remote[0].where(remote[1])}: changed by another publisher on each of {PUBLISH_ATTEMPTS} "
                f"tries; bundle {fp} is uploaded but not published"
            )
        if remote is not None and local_moved and not published:
            _follow_remote(data_dir, remote, render_site)
    return BundleResult(
        fingerprint=fp,
        path=final,
        published=published,
        attestation=att,
        previous_published=prev["fingerprint"] if prev else None,
        failed_blocking=failed,
        refused_older=refused_older,
    )


def _may_publish(
    failed: list[str], partition: Any, prev: dict[str, Any] | None, allow_older: bool
) -> tuple[bool, str | None]:
    """(publish?, why refused as older): every blocking gate green, and not older than `prev`."""
    prev_partition = (prev or {}).get("partition")
    if not failed and partition and prev_partition and str(partition) < str(prev_partition) and not allow_older:
        return False, (
            f"partition {partition} is older than the published {prev_partition} "
            f"({prev['fingerprint']}): not published without --allow-older"
        )
    return not failed, None


def _follow_remote(
    data_dir: Path, remote: tuple[objectstore.S3Store, str], render_site: Callable[[Path, Path], None] | None
) -> None:
    """Point the working copy's site and published.json back at the bucket's pointer (after this
    publisher moved them and then lost the conditional write): the winner's bundle is copied
    from the bucket when it is not here (each object checked against its sha256)."""
    ptr, _ = _remote_pointer(*remote)
    if ptr is None:
        return
    bundle = Path(data_dir) / "bundles" / ptr["fingerprint"]
    if not bundle.is_dir():
        stage = bundle.parent / f".tmp-{pid_tag()}{os.urandom(8).hex()}"
        try:
            remote[0].get_tree(f"bundles/{ptr['fingerprint']}", stage)
            os.rename(stage, bundle)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    publish_pointer(data_dir, ptr, bundle, render_site)


def publish_pointer(
    data_dir: Path,
    pointer: dict[str, Any],
    bundle: Path | None = None,
    render_site: Callable[[Path, Path], None] | None = None,
) -> Path:
    """Write `pointer` into a fresh site directory (rendered by `render_site(bundle, dir)` when
    given), swap the `site` symlink to it in one rename, and make `published.json` the symlink
    `site/published.json`: the pointer and the served site move together. Call under the
    publish lock. Returns the new site directory."""
    data_dir = Path(data_dir)
    site = data_dir / SITE_DIR
    served = {os.readlink(site)} if site.is_symlink() else set()
    sweep_orphans(data_dir, ".site-", keep=served)  # stages of a killed publication, never the served one
    stage = data_dir / f".site-{pid_tag()}{pointer['fingerprint']}-{os.urandom(4).hex()}"
    stage.mkdir()
    try:
        if render_site is not None and bundle is not None:
            render_site(bundle, stage)
        atomic_write_json(stage / PUBLISHED_POINTER, pointer)
        old = swap_symlink(data_dir / SITE_DIR, stage.name)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    ptr = data_dir / PUBLISHED_POINTER
    if not (ptr.is_symlink() and os.readlink(ptr) == f"{SITE_DIR}/{PUBLISHED_POINTER}"):
        link = data_dir / f".{PUBLISHED_POINTER}.{pid_tag()}link"
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        os.symlink(f"{SITE_DIR}/{PUBLISHED_POINTER}", link)
        os.replace(link, ptr)  # once: from a regular file (older layout) to the symlink
    if old is not None and old != stage.resolve() and old.parent == data_dir.resolve():
        shutil.rmtree(old, ignore_errors=True)
    return stage


def _utc(epoch_ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_ms / 1000))


def _inside(root: Path, rel: Any, what: str) -> tuple[Path | None, str | None]:
    """`root/rel` when `rel` is a relative path that stays inside `root`; else a problem."""
    if not isinstance(rel, str) or not rel:
        return None, f"{what} {rel!r}: not a path"
    pp = Path(rel)
    if pp.is_absolute() or ".." in pp.parts:
        return None, f"{what} {rel}: outside the {'bundle' if what == 'artifact' else 'data dir'} (refused)"
    full = root / pp
    try:
        full.resolve().relative_to(root.resolve())
    except ValueError:
        return None, f"{what} {rel}: resolves outside the {'bundle' if what == 'artifact' else 'data dir'} (refused)"
    return full, None


def _is_sha(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None


def fetch_bundle(url: str, dest: Path, data_url: str | None = None) -> tuple[Path, Path]:
    """Copy a bundle out of the bucket for `verify`: `url` is `s3://bucket/prefix/bundles/<fp>`, or
    the data dir `s3://bucket/prefix` (its published bundle). Every object under the bundle's
    prefix comes along as it is (verify re-hashes each against the manifest and reports any the
    manifest does not name), and the raw runs the manifest attests, from `data_url` (default: the
    bundle's data dir). Returns (bundle dir, data dir) under `dest`."""
    bucket, key = objectstore.parse_url(url, "bundle")
    segs = key.split("/") if key else []
    if len(segs) >= 2 and segs[-2] == "bundles":
        root, fp = "/".join(segs[:-2]), segs[-1]
    else:
        root = key
        ptr, _ = _remote_pointer(objectstore.store_from_url(f"s3://{bucket}/{root}", "bundle"), PUBLISHED_POINTER)
        if ptr is None:
            raise objectstore.ObjectStoreError(
                f"{url}: no {PUBLISHED_POINTER}; name a bundle: {url}/bundles/<fingerprint>"
            )
        fp = ptr["fingerprint"]
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", fp) or fp in (".", ".."):
        raise objectstore.ObjectStoreError(f"{url}: {fp!r} is not a bundle name")
    store = objectstore.store_from_url(f"s3://{bucket}/{root}", "bundle")
    bundle_dir = Path(dest) / "bundles" / fp
    names = [n[len(f"bundles/{fp}/") :] for n in store.list(f"bundles/{fp}")]
    if not names:
        raise objectstore.ObjectStoreError(f"{store.where(f'bundles/{fp}')}: no such bundle")
    for n in names:
        p, bad = _inside(bundle_dir, n, "artifact")
        if p is not None:
            store.get_file(f"bundles/{fp}/{n}", p)
    data_store = objectstore.store_from_url(data_url, "--data-dir") if data_url else store
    att_path = bundle_dir / BUNDLE_FILES["attestation"]
    try:
        raw_runs = json.loads(att_path.read_text()).get("raw_runs") if att_path.is_file() else None
    except (ValueError, UnicodeDecodeError, AttributeError):
        raw_runs = None  # verify reports the attestation
    data_dir = Path(dest) / "data"
    for rel in raw_runs if isinstance(raw_runs, dict) else {}:
        p, bad = _inside(data_dir, rel, "raw run")
        if p is not None and data_store.head(rel) is not None:  # a missing one: verify names it
            data_store.get_file(rel, p)
    return bundle_dir, data_dir


def verify(bundle_dir: Path, data_dir: Path | None = None, tolerance: float = VERIFY_TOLERANCE) -> list[str]:
    """Re-hash every artifact, check every attested field, and re-derive the tables.

    Returns the list of problems (empty when the bundle holds); never raises on a malformed
    attestation (each malformation is one problem).
    """
    bundle_dir = Path(bundle_dir)
    problems: list[str] = []
    att_path = bundle_dir / BUNDLE_FILES["attestation"]
    if not att_path.is_file():
        return [f"{att_path}: missing attestation"]
    try:
        att = json.loads(att_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return [f"{att_path}: not valid JSON ({e})"]
    if not isinstance(att, dict):
        return [f"{att_path}: not a JSON object"]
    artifacts = att.get("artifacts")
    if not isinstance(artifacts, dict):
        return [f"attestation: artifacts is a {type(artifacts).__name__}, not a mapping of path -> sha256"]
    if att.get("attestation_scheme") != ATTESTATION_SCHEME:
        problems.append(
            f"attestation: scheme {att.get('attestation_scheme')!r} != {ATTESTATION_SCHEME} "
            "(fields outside the content hash; re-assemble the bundle)"
        )
    # site/ is rendered from the attested files after attestation (it shows the fingerprint),
    # so it cannot itself be attested; everything else on disk must be.
    on_disk = {
        p.relative_to(bundle_dir).as_posix()
        for p in bundle_dir.rglob("*")
        if (p.is_file() or p.is_symlink())
        and p.name != BUNDLE_FILES["attestation"]
        and p.relative_to(bundle_dir).parts[0] != SITE_DIR
    }
    for rel in sorted(on_disk - set(artifacts)):
        problems.append(f"{rel}: file not in the attestation")
    for rel, want in sorted(artifacts.items(), key=lambda kv: str(kv[0])):
        p, bad = _inside(bundle_dir, rel, "artifact")
        if bad:
            problems.append(bad)
        elif not _is_sha(want):
            problems.append(f"{rel}: attested sha256 {want!r} is not a sha256")
        elif p.is_symlink() or not p.is_file():
            problems.append(f"{rel}: missing" if not p.is_symlink() else f"{rel}: a symlink, not a file (refused)")
        elif (got := sha256_file(p)) != want:
            problems.append(f"{rel}: sha256 {got[:12]}… != attested {want[:12]}…")
    data_dir = Path(data_dir) if data_dir else bundle_dir.parent.parent
    raw_runs = att.get("raw_runs", {})
    if not isinstance(raw_runs, dict):
        problems.append(f"attestation: raw_runs is a {type(raw_runs).__name__}, not a mapping of path -> sha256")
        raw_runs = {}
    missing = []
    for rel, want in sorted(raw_runs.items()):
        p, bad = _inside(data_dir, rel, "raw run")
        if bad:
            problems.append(bad)
        elif not p.is_file():
            missing.append(rel)
        elif (got := sha256_file(p)) != want:
            problems.append(f"{rel}: raw run sha256 {got[:12]}… != attested {want[:12]}…")
    if missing:
        problems.append(f"raw runs missing under {data_dir} ({len(missing)}): {', '.join(missing)}")
    try:
        csha = content_hash(artifacts, attested_facts(att))
    except (TypeError, ValueError) as e:
        return [*problems, f"attestation: cannot be hashed ({e})"]
    if csha != att.get("content_sha256"):
        problems.append("attestation: content hash does not match its fields and artifacts (attestation edited?)")
    fp = att.get("fingerprint", "")
    created = att.get("created_ms")
    if not isinstance(fp, str) or fp != f"{FINGERPRINT_PREFIX}_{csha[:8]}_{created}":
        problems.append(f"attestation: fingerprint {fp} does not match content hash {csha[:8]} and created_ms")
    if bundle_dir.name != fp:
        problems.append(f"bundle directory {bundle_dir.name} != fingerprint {fp}")
    problems += _check_derived_fields(att, bundle_dir)
    if problems:
        return problems
    return _rescore(bundle_dir, tolerance, att)


def _check_derived_fields(att: dict[str, Any], bundle_dir: Path) -> list[str]:
    """Fields that follow from others: created_utc, all_blocking_green, the gates (tables/gates.csv)."""
    out = []
    if isinstance(att.get("created_ms"), int) and att.get("created_utc") != _utc(att["created_ms"]):
        out.append(f"attestation: created_utc {att.get('created_utc')} != created_ms {att['created_ms']}")
    gates = att.get("gates")
    if not isinstance(gates, list) or not all(isinstance(g, dict) for g in gates):
        return [*out, "attestation: gates is not a list of gate results"]
    green = not any(g.get("blocking") and not g.get("passed") for g in gates)
    if att.get("all_blocking_green") is not green:
        out.append(f"attestation: all_blocking_green {att.get('all_blocking_green')} but the gates say {green}")
    table = bundle_dir / "tables" / "gates.csv"
    if table.is_file():
        try:
            rows = pl.read_csv(table, infer_schema_length=0).to_dicts()
        except Exception as e:  # noqa: BLE001 - any unreadable table is a verification failure
            return [*out, f"tables/gates.csv: unreadable ({e})"]
        want = {(r.get("gate"), r.get("subject") or None): r for r in rows}
        got = {(g.get("name"), g.get("subject") or None): g for g in gates}
        if set(want) != set(got):
            out.append(
                "attestation: gates differ from tables/gates.csv ("
                + ", ".join(sorted(f"{n}[{s}]" if s else str(n) for n, s in set(want) ^ set(got)))
                + ")"
            )
        for key in sorted(set(want) & set(got), key=str):
            r, g = want[key], got[key]
            for f in ("blocking", "passed"):
                if str(r.get(f)).lower() != str(g.get(f)).lower():
                    out.append(f"attestation: gate {key[0]} {f}={g.get(f)} but tables/gates.csv says {r.get(f)}")
            if not _same_number(r.get("value"), g.get("value")):
                out.append(
                    f"attestation: gate {key[0]} value {g.get('value')} but tables/gates.csv says {r.get('value')}"
                )
    return out


def _same_number(a: Any, b: Any) -> bool:
    if a in (None, "") and b is None:
        return True
    try:
        fa, fb = float(a), float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)
    if math.isnan(fa) and math.isnan(fb):
        return True
    return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-12)


def statistics_record(cfg: Any) -> dict[str, Any]:
    """The attestation's `statistics`: what the week's CIs and p-values were computed with
    (`cfg`: the loaded config), so that verify re-runs them exactly (issue 18)."""
    return {
        "seed": int(cfg.run.seed),
        "bootstrap_b": int(cfg.run.ci_b),
        "randomisation_b": int(cfg.run.perm_b),
        "alpha": float(cfg.run.alpha),
    }


_MAX_LINES = 12  # FAIL lines per re-derived table; the rest counted on one more line


def _close(a: Any, b: Any, tolerance: float) -> bool:
    """Equal within `tolerance`, relative to the magnitude above 1 (latencies are in ms);
    None/NaN equal only to None/NaN."""
    na = a is None or (isinstance(a, float) and math.isnan(a))
    nb = b is None or (isinstance(b, float) and math.isnan(b))
    if na or nb:
        return na and nb
    return abs(float(a) - float(b)) <= tolerance * max(1.0, abs(float(b)))


def _capped(lines: list[str], what: str) -> list[str]:
    if len(lines) <= _MAX_LINES:
        return lines
    return [*lines[:_MAX_LINES], f"{what}: {len(lines) - _MAX_LINES} more mismatch(es)"]


def _statistics(att: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    st = att.get("statistics")
    keys = ("seed", "bootstrap_b", "randomisation_b", "alpha")
    if not isinstance(st, dict) or any(k not in st for k in keys):
        return (
            None,
            "attestation: statistics (seed, bootstrap_b, randomisation_b, alpha) not recorded: CIs and p-values cannot be re-derived",
        )
    try:
        return {k: (float(st[k]) if k == "alpha" else int(st[k])) for k in keys}, None
    except (TypeError, ValueError):
        return None, f"attestation: statistics {st!r} are not numbers"


def _check_score_cis(bundle_dir: Path, pq: pl.DataFrame, st: dict[str, Any], tolerance: float) -> list[str]:
    """Every row of scores.parquet re-derived with the attested seed, B and alpha: the means,
    the bootstrap CIs, the latency percentiles (p50/p95/p99, p99/p95), judged_10 and
    file_credit, and n. One FAIL line per mismatching value."""
    p = bundle_dir / BUNDLE_FILES["scores"]
    if not p.is_file():
        return []
    try:
        sc = pl.read_parquet(p)
    except Exception as e:  # noqa: BLE001
        return [f"scores.parquet: unreadable ({e})"]
    re_sc = score(pq, b=st["bootstrap_b"], seed=st["seed"], alpha=st["alpha"])
    keys = ["system", "slice", "metric"]
    j = sc.join(re_sc, on=keys, how="full", suffix="_re", coalesce=True)
    out = []
    for r in j.iter_rows(named=True):
        where = f"scores.parquet: {r['system']} {r['slice']} {r['metric']}"
        if r.get("n") is None or r.get("n_re") is None:
            out.append(f"{where}: on one side only ({'bundle' if r.get('n') is not None else 're-derived'})")
            continue
        for c in ("mean", "ci_low", "ci_high"):
            if not _close(r[c], r[f"{c}_re"], tolerance):
                out.append(f"{where} {c} = {r[c]}, re-derived {r[f'{c}_re']}")
        if r["n"] != r["n_re"]:
            out.append(f"{where} n = {r['n']}, re-derived {r['n_re']}")
    return _capped(out, "scores.parquet")


_CMP_NUMBERS = ("delta", "ci_low", "ci_high", "p_value", "p_holm", "sd_diff", "mde")


def _check_comparison_stats(bundle_dir: Path, pq: pl.DataFrame, st: dict[str, Any], tolerance: float) -> list[str]:
    """Every decision of comparisons.parquet re-run (`stats.compare`) with its attested seed
    (itself re-derived from the week's seed), B and alpha: deltas, CIs, p-values, Holm, n, MDE
    and status. One FAIL line per mismatching value."""
    p = bundle_dir / BUNDLE_FILES["comparisons"]
    if not p.is_file():
        return []
    try:
        cmp = pl.read_parquet(p)
    except Exception as e:  # noqa: BLE001
        return [f"comparisons.parquet: unreadable ({e})"]
    out: list[str] = []
    for (control, test), grp in cmp.group_by(["control", "test"], maintain_order=True):
        what = f"comparisons.parquet: {test} vs {control}"
        seeds = grp["seed"].unique().to_list() if "seed" in grp.columns else []
        want_seed = decision_seed(st["seed"], control, test)
        if seeds != [want_seed]:
            out.append(f"{what}: seed {seeds} != {want_seed} (derived from the attested seed)")
            continue
        needed: dict[str, float] = {}
        if "needed_effect" in grp.columns:
            for m, v in grp.select("metric", "needed_effect").drop_nulls().iter_rows():
                needed[m] = min(v, needed.get(m, v))
        try:
            re_c = compare(
                pq,
                control,
                test,
                grp["metric"].unique(maintain_order=True).to_list(),
                b_ci=st["bootstrap_b"],
                b_perm=st["randomisation_b"],
                seed=want_seed,
                alpha=st["alpha"],
                needed_effect=needed,
            )
        except (ValueError, KeyError) as e:
            out.append(f"{what}: cannot be re-run ({e})")
            continue
        j = grp.join(re_c, on=["slice", "metric"], how="full", suffix="_re", coalesce=True)
        for r in j.iter_rows(named=True):
            where = f"{what} {r['slice']} {r['metric']}"
            if r.get("control") is None or r.get("control_re") is None:
                out.append(f"{where}: on one side only")
                continue
            for c in (c for c in _CMP_NUMBERS if c in grp.columns):
                if not _close(r[c], r[f"{c}_re"], tolerance):
                    out.append(f"{where} {c} = {r[c]}, re-derived {r[f'{c}_re']}")
            for c in (c for c in ("n", "status") if c in grp.columns):
                if r[c] != r[f"{c}_re"]:
                    out.append(f"{where} {c} = {r[c]}, re-derived {r[f'{c}_re']}")
    return _capped(out, "comparisons.parquet")


def _read_optional(p: Path) -> pl.DataFrame | None:
    return pl.read_parquet(p) if p.is_file() else None


def _check_gates(att: dict[str, Any], bundle_dir: Path, pq: pl.DataFrame, tolerance: float) -> list[str]:
    """The gates whose inputs are in the bundle, re-evaluated with the gate functions of
    `lens_core.decide` over the bundle's tables (pool, ece, power, ci_width, tail, sla_recall,
    file_credit, flatline, calibration_parity, cost) and compared with the attested results:
    the value always; passed where the attested threshold is the one configured now. Schema,
    parity and cfg_hash need the raw runs and a simulator re-run: they are checked by hash."""
    gates = att.get("gates")
    systems = att.get("systems")
    if not isinstance(gates, list) or not isinstance(systems, dict) or not systems:
        return []
    sc = _read_optional(bundle_dir / BUNDLE_FILES["scores"])
    if sc is None:
        return []
    cmp = _read_optional(bundle_dir / BUNDLE_FILES["comparisons"])
    cal = _read_optional(bundle_dir / "calibration" / "calibration.parquet")
    parity = _read_optional(bundle_dir / "calibration" / "parity.parquet")
    order = [_system_of(name, info) for name, info in systems.items()]
    base = next((s for s in order if s.pack == "baseline"), order[0])
    order = [base, *[s for s in order if s is not base]]
    source = (att.get("data_source") or {}).get("source") if isinstance(att.get("data_source"), dict) else None
    redone: list[GateResult] = []
    redone += pool_gate(sc, None, None)
    if cal is not None:
        redone += ece_gate(cal, source)
    if cmp is not None:
        redone += decision_gates(cmp, primary_comparisons(order))
    redone += tail_gate(sc) + sla_recall_gate(sc, base.name, pq) + file_credit_gate(sc) + flatline_gate(pq)
    if parity is not None:
        redone += calibration_parity_gate(parity)
    redone += cost_gate(sc, base.name, pq)
    attested = {(g.get("name"), g.get("subject") or None): g for g in gates if isinstance(g, dict)}
    out = []
    for g in redone:
        key = (g.name, g.subject or None)
        a = attested.get(key)
        where = f"gate {g.name}" + (f"[{g.subject}]" if g.subject else "")
        if a is None:
            out.append(f"{where}: re-evaluated from the bundle's data but not in the attestation")
            continue
        if not _close(_num_or_none(a.get("value")), _num_or_none(g.value), tolerance):
            out.append(f"{where}: attested value {a.get('value')}, re-evaluated {g.value}")
        if str(a.get("threshold")) == str(g.threshold) and bool(a.get("passed")) != bool(g.passed):
            out.append(f"{where}: attested passed={a.get('passed')}, re-evaluated passed={g.passed}")
    return _capped(out, "gates")


def _num_or_none(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class _System:
    """What the gate functions read of a system: its name and pack (from the attestation)."""

    name: str
    pack: str


def _system_of(name: str, info: Any) -> _System:
    return _System(str(name), str(info.get("pack", "")) if isinstance(info, dict) else "")


def _rescore(bundle_dir: Path, tolerance: float, att: dict[str, Any] | None = None) -> list[str]:
    """per_query, scores (means), the hero table and comparison deltas re-derived from the
    bundle's own agg / hits / qrels (+ queries) and compared within `tolerance`."""
    problems: list[str] = []
    try:
        agg = pl.read_parquet(bundle_dir / BUNDLE_FILES["agg"])
        hits = pl.read_parquet(bundle_dir / BUNDLE_FILES["hits"])
        qrels = pl.read_parquet(bundle_dir / BUNDLE_FILES["qrels"])
        queries = (
            pl.read_parquet(bundle_dir / "queries.parquet") if (bundle_dir / "queries.parquet").is_file() else None
        )
        hero = pl.read_csv(bundle_dir / BUNDLE_FILES["hero_table"])
        pq = per_query_metrics(agg, hits, qrels, queries=queries)
    except Exception as e:  # noqa: BLE001 - any unreadable table is a verification failure
        return [f"cannot read or re-score bundle tables: {e}"]
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
    problems += _check_per_query(bundle_dir, pq, tolerance)
    has_stats = (bundle_dir / BUNDLE_FILES["scores"]).is_file() or (bundle_dir / BUNDLE_FILES["comparisons"]).is_file()
    st, missing = _statistics(att) if att is not None and has_stats else (None, None)
    if st is None:  # the means and deltas alone (and, when the statistics are not attested, one line)
        problems += _check_scores(bundle_dir, pq, tolerance)
        problems += _check_comparisons(bundle_dir, pq, tolerance)
        return [*problems, missing] if missing else problems
    # issue 18: every attested number that follows from the bundle's data, re-derived (one line per value)
    try:
        problems += _check_score_cis(bundle_dir, pq, st, tolerance)
        problems += _check_comparison_stats(bundle_dir, pq, st, tolerance)
        problems += _check_gates(att, bundle_dir, pq, tolerance)
    except Exception as e:  # noqa: BLE001 - a table the re-derivation cannot read is a failure, not a crash
        problems.append(f"cannot re-derive the attested statistics: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return problems


def _check_per_query(bundle_dir: Path, pq: pl.DataFrame, tolerance: float) -> list[str]:
    p = bundle_dir / BUNDLE_FILES["per_query"]
    if not p.is_file():
        return []
    try:
        bq = pl.read_parquet(p)
    except Exception as e:  # noqa: BLE001
        return [f"per_query.parquet: unreadable ({e})"]
    metrics = [m for m in PER_QUERY_METRICS if m in bq.columns]
    j = bq.select("system", "qid", *metrics).join(
        pq.select("system", "qid", *metrics), on=["system", "qid"], how="full", suffix="_rescored", coalesce=True
    )
    out = []
    if j.height != bq.height or j.height != pq.height:
        out.append(f"per_query.parquet: {bq.height} rows, re-scored {pq.height} ({j.height} keys in either)")
    for m in metrics:
        d = j.filter(
            ((pl.col(m).cast(pl.Float64) - pl.col(f"{m}_rescored").cast(pl.Float64)).abs() > tolerance)
            | (pl.col(m).is_null() != pl.col(f"{m}_rescored").is_null())
        )
        if d.height:
            r = d.row(0, named=True)
            out.append(
                f"per_query.parquet: {m} differs from re-scored in {d.height} row(s), e.g. "
                f"{r['system']}/{r['qid']}: {r[m]} vs re-scored {r[f'{m}_rescored']}"
            )
    return out


def _check_scores(bundle_dir: Path, pq: pl.DataFrame, tolerance: float) -> list[str]:
    p = bundle_dir / BUNDLE_FILES["scores"]
    if not p.is_file():
        return []
    try:
        sc = pl.read_parquet(p)
    except Exception as e:  # noqa: BLE001
        return [f"scores.parquet: unreadable ({e})"]
    rows = []
    for name, expr in slices(pq):
        part = pq.filter(expr)
        for m in MEAN_METRICS:
            if m in part.columns:
                g = part.group_by("system").agg(pl.col(m).cast(pl.Float64).fill_null(0.0).mean().alias("rescored"))
                rows += [(s, name, m, v) for s, v in g.iter_rows()]
    re_sc = pl.DataFrame(
        rows,
        schema={"system": pl.String, "slice": pl.String, "metric": pl.String, "rescored": pl.Float64},
        orient="row",
    )
    mine = sc.filter(pl.col("metric").is_in(list(MEAN_METRICS))).select("system", "slice", "metric", "mean")
    j = mine.join(re_sc, on=["system", "slice", "metric"], how="full", coalesce=True)
    out = []
    lost = j.filter(pl.col("mean").is_null() != pl.col("rescored").is_null())
    if lost.height:
        r = lost.row(0, named=True)
        out.append(
            f"scores.parquet: {lost.height} (system, slice, metric) row(s) on one side only, e.g. "
            f"{r['system']} {r['slice']} {r['metric']}"
        )
    bad = j.filter((pl.col("mean") - pl.col("rescored")).abs() > tolerance)
    for r in bad.head(10).iter_rows(named=True):
        out.append(
            f"scores.parquet: {r['system']} {r['slice']} {r['metric']} = {r['mean']:.4f}, "
            f"re-scored {r['rescored']:.4f} (|Δ| > {tolerance})"
        )
    if bad.height > 10:
        out.append(f"scores.parquet: {bad.height - 10} more row(s) differ")
    return out


def _check_comparisons(bundle_dir: Path, pq: pl.DataFrame, tolerance: float) -> list[str]:
    """Each row's delta re-derived as the paired mean difference (test − control) over the
    slice's queries present for both systems; CIs and p-values are not re-derived."""
    p = bundle_dir / BUNDLE_FILES["comparisons"]
    if not p.is_file():
        return []
    try:
        cmp = pl.read_parquet(p)
    except Exception as e:  # noqa: BLE001
        return [f"comparisons.parquet: unreadable ({e})"]
    out: list[str] = []
    cache: dict[tuple[str, str, str], float | None] = {}
    n_bad = 0
    for r in cmp.iter_rows(named=True):
        key = (r["control"], r["test"], r["slice"])
        m = r["metric"]
        if m not in pq.columns:
            continue
        expr = pl.lit(True)
        if r["slice"] != "all":
            dim, _, val = str(r["slice"]).partition("=")
            if dim not in pq.columns:
                continue
            expr = pl.col(dim).cast(pl.String) == val
        if (key, m) not in cache:
            part = pq.filter(expr)
            a = part.filter(pl.col("system") == r["control"]).select("qid", pl.col(m).alias("c"))
            b = part.filter(pl.col("system") == r["test"]).select("qid", pl.col(m).alias("t"))
            d = a.join(b, on="qid").filter(pl.col("c").is_not_nan() & pl.col("t").is_not_nan())
            cache[(key, m)] = float((d["t"] - d["c"]).mean()) if d.height else None
        want, got = cache[(key, m)], r["delta"]
        if want is None or got is None:
            if (want is None) != (got is None or (isinstance(got, float) and math.isnan(got))):
                n_bad += 1
                if n_bad <= 10:
                    out.append(
                        f"comparisons.parquet: {key[1]} vs {key[0]} {key[2]} {m}: delta {got}, re-derived {want}"
                    )
        elif not math.isfinite(got) or abs(got - want) > tolerance:
            n_bad += 1
            if n_bad <= 10:
                out.append(
                    f"comparisons.parquet: {key[1]} vs {key[0]} {key[2]} {m}: delta {got:.4f}, "
                    f"re-derived {want:.4f} (|Δ| > {tolerance})"
                )
    if n_bad > 10:
        out.append(f"comparisons.parquet: {n_bad - 10} more row(s) differ")
    return out
