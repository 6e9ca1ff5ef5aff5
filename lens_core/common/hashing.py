"""Hashing, canonical JSON, fingerprints and atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

_CHUNK = 1 << 20
# Temporary files and directories carry the writer's pid (`p<pid>_`), so the next writer can tell
# an orphan of a killed process from the work in progress of a live one (issue 18).
_PID_TAG = re.compile(r"p(\d+)_")
LEGACY_ORPHAN_AGE_S = 600  # an untagged temporary (older layout) is an orphan after this long


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form that gets hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def content_hash(artifacts: dict[str, str], extra: dict[str, Any] | None = None) -> str:
    """sha256 over the sorted (name, sha256) pairs of a bundle's artifacts, plus extra facts."""
    payload = {"artifacts": dict(sorted(artifacts.items())), "extra": extra or {}}
    return sha256_hex(canonical_json(payload).encode())


def fingerprint(content_sha256: str, epoch_ms: int, prefix: str = "v22") -> str:
    """`v22_<first 8 hex of the content hash>_<epoch ms>` (SPEC §10)."""
    return f"{prefix}_{content_sha256[:8]}_{int(epoch_ms)}"


def pid_tag() -> str:
    """`p<pid>_`: the prefix of this process's temporary names (see `sweep_orphans`)."""
    return f"p{os.getpid()}_"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphans(
    directory: str | os.PathLike, prefix: str, now: float | None = None, keep: set[str] | frozenset[str] = frozenset()
) -> list[Path]:
    """Remove the temporaries `<prefix>p<pid>_…` in `directory` whose writer is no longer alive
    (a kill -9 leaves them), and untagged `<prefix>…` ones older than LEGACY_ORPHAN_AGE_S; never
    the names in `keep` (what a live symlink points at). Returns what was removed."""
    d = Path(directory)
    removed: list[Path] = []
    if not d.is_dir():
        return removed
    now = time.time() if now is None else now
    for p in d.iterdir():
        if not p.name.startswith(prefix) or p.name in keep:
            continue
        m = _PID_TAG.match(p.name[len(prefix) :])
        try:
            if m:
                if pid_alive(int(m.group(1))):
                    continue
            elif now - p.lstat().st_mtime < LEGACY_ORPHAN_AGE_S:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()
            removed.append(p)
        except FileNotFoundError:
            continue  # another sweeper got there first
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only on success.

    Readers never see a half-written file: either the old file or the new one. Orphans of an
    earlier writer of the same target that was killed (`.<name>.p<pid>_…`) are removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_orphans(target.parent, f".{target.name}.")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{pid_tag()}", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; artifacts are meant to be read
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


COMPLETE_MARKER = "_COMPLETE.json"


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh directory beside `out` to write a set of files into; on success, add the
    completeness marker `_COMPLETE.json` (each file's sha256) and put the set in place at once:
    a new `out` is one rename; an `out` that holds only an earlier set (and the marker) is
    replaced whole (moved aside, the new one renamed in, the old one removed), so old and new
    files never mix. An `out` that also holds other files gets the set file by file with the
    marker removed first and written last: a set without its marker is incomplete. On any
    error nothing is put in place. Orphans of a killed writer are removed first (issue 18)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_orphans(out.parent, f".{out.name}.")
    stage = out.parent / f".{out.name}.{pid_tag()}{os.urandom(4).hex()}"
    stage.mkdir()
    try:
        yield stage
        files = sorted(p.name for p in stage.iterdir() if p.is_file() and p.name != COMPLETE_MARKER)
        marker = {"files": {n: sha256_file(stage / n) for n in files}}
        (stage / COMPLETE_MARKER).write_text(canonical_json(marker) + "\n")
        if not out.exists() and not out.is_symlink():
            os.rename(stage, out)
        elif out.is_dir() and not out.is_symlink() and {p.name for p in out.iterdir()} <= {*files, COMPLETE_MARKER}:
            aside = out.parent / f".{out.name}.{pid_tag()}old-{os.urandom(4).hex()}"
            os.rename(out, aside)
            os.rename(stage, out)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                (out / COMPLETE_MARKER).unlink()
            for n in files:
                os.replace(stage / n, out / n)
            os.replace(stage / COMPLETE_MARKER, out / COMPLETE_MARKER)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def swap_symlink(link: str | os.PathLike, target_name: str) -> Path | None:
    """Point the symlink `link` at the sibling `target_name` in one atomic rename. A real
    directory at `link` (an older layout) is moved aside first. Returns what `link` pointed at
    before (for the caller to remove), or None."""
    link = Path(link)
    old = link.resolve() if link.is_symlink() else None
    if link.exists() and not link.is_symlink():
        aside = link.with_name(f".{link.name}-{pid_tag()}old-{os.urandom(4).hex()}")
        os.rename(link, aside)
        old = aside
    tmp = link.with_name(f".{link.name}-{pid_tag()}link-{os.urandom(4).hex()}")
    os.symlink(target_name, tmp)
    os.replace(tmp, link)
    return old


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")
