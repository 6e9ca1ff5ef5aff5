"""Shared fixtures: the session runs on its own temporary LENS_DATA_DIR and DAGSTER_HOME (never the
repo's ./data and ./dagster_home, whatever the shell or the Makefile exported), every test that asks
for `data_dir` gets its own; caches are shared per machine. At the end of the session the repo's
./data and ./dagster_home must be byte-for-byte what they were at its start."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Content-addressed caches (embeddings, indexes) survive across tests and runs.
os.environ.setdefault("LENS_CACHE_DIR", str(REPO / ".cache" / "test"))

# The session's own instance and data dir, set before any test module is imported (module- and
# session-scoped fixtures, subprocesses and `dagster dev` children inherit them).
SESSION_ROOT = Path(tempfile.mkdtemp(prefix="lens-tests-"))
os.environ["LENS_DATA_DIR"] = str(SESSION_ROOT / "data")
os.environ["DAGSTER_HOME"] = str(SESSION_ROOT / "dagster_home")
(SESSION_ROOT / "data").mkdir()
(SESSION_ROOT / "dagster_home").mkdir()
(SESSION_ROOT / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")

# What a test session must leave untouched: the user's instance and data (`make demo`, `make ui`).
USER_TREES = (REPO / "data", REPO / "dagster_home")


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of the content (files), the target (links) or "dir"; {} if absent."""
    out: dict[str, str] = {}
    if not root.exists() and not root.is_symlink():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in dirnames:
            p = base / name
            out[str(p.relative_to(root))] = f"link:{os.readlink(p)}" if p.is_symlink() else "dir"
        for name in sorted(filenames):
            p = base / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = f"link:{os.readlink(p)}"
                continue
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[rel] = h.hexdigest()
    return out


def tree_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return [f"+{k}" for k in added] + [f"-{k}" for k in removed] + [f"~{k}" for k in changed]


def new_dagster_home(path: Path) -> Path:
    """A fresh DAGSTER_HOME at `path` (telemetry off)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    return path


@contextlib.contextmanager
def own_dirs(data: Path, home: Path | None = None):
    """LENS_DATA_DIR=data and DAGSTER_HOME=home (default: a fresh one beside data) for a block, for
    fixtures broader than one test (a monkeypatch is per test); the old values come back after."""
    home = new_dagster_home(home or data.parent / f"{data.name}.dagster_home")
    old = {k: os.environ.get(k) for k in ("LENS_DATA_DIR", "DAGSTER_HOME")}
    os.environ["LENS_DATA_DIR"], os.environ["DAGSTER_HOME"] = str(data), str(home)
    try:
        yield data, home
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def user_instance_and_data_untouched():
    """The session leaves ./data and ./dagster_home byte-for-byte as it found them (issue 23): a
    change is reported as an error at the session's last teardown, naming the changed paths.
    (A `make ui` running during the tests writes to ./dagster_home too: stop it first.) The session's
    own directories are removed afterwards unless LENS_KEEP_TEST_DATA is set."""
    before = {str(t): tree_digest(t) for t in USER_TREES}
    yield
    problems = []
    for t in USER_TREES:
        changes = tree_changes(before[str(t)], tree_digest(t))
        if changes:
            problems.append(f"{t}: {len(changes)} change(s): {', '.join(changes[:10])}")
    if not os.environ.get("LENS_KEEP_TEST_DATA"):
        shutil.rmtree(SESSION_ROOT, ignore_errors=True)
    assert not problems, "the test session changed the user's instance or data: " + "; ".join(problems)


@pytest.fixture
def lens_config(tmp_path, monkeypatch):
    """Write a LENS_CONFIG override and point the environment at it (config cache cleared
    around); returns the file's path."""
    from lens_core.common import settings

    def use(text: str) -> Path:
        path = tmp_path / "override.yaml"
        path.write_text(text)
        monkeypatch.setenv("LENS_CONFIG", str(path))
        settings._load.cache_clear()
        return path

    settings._load.cache_clear()
    yield use
    monkeypatch.delenv("LENS_CONFIG", raising=False)
    settings._load.cache_clear()


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    monkeypatch.setenv("LENS_DATA_DIR", str(d))
    monkeypatch.delenv("DATA_SOURCE", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return d


# ----------------------------------------------------------------------------------------------
# The fault-injection tally (issue 18): one line at the end of the session, over the fault suites
# that ran (each keeps its own TALLY; a suite that did not run adds nothing).
# ----------------------------------------------------------------------------------------------
FAULT_SUITES = ("tests.test_endpoint_faults", "tests.test_validation_contract", "tests.test_faults_atomic")
_LEAK_OUTCOMES = {"leak", "accepted", "crashed", "unclear"}


# The case classes, by suite and case-name prefix (issue 18).
FAULT_CLASSES = ("bad input", "endpoint faults", "kill -9 points", "tampering", "secrets", "concurrency")
_CLASS_OF_PREFIX = {
    "query_table": "bad input", "name": "bad input", "config": "bad input",
    "ndjson": "endpoint faults", "oss": "endpoint faults", "hedged": "endpoint faults", "run": "endpoint faults",
    "client": "endpoint faults", "record": "endpoint faults", "drip": "endpoint faults",
    "auth": "secrets", "token": "secrets", "cli": "secrets", "job": "secrets",
    "kill9": "kill -9 points", "tamper": "tampering", "bundle": "tampering",
    "lock": "concurrency", "publish": "concurrency",
}  # fmt: skip


def fault_class(suite: str, case: object) -> str:
    """The case class of one tally entry (a validation-suite case is bad input)."""
    if suite == "test_validation_contract":
        return "bad input"
    name = case[0] if isinstance(case, (tuple, list)) else str(case.get("case", ""))
    return _CLASS_OF_PREFIX.get(str(name).split(":", 1)[0], "other")


def fault_classes() -> dict[str, int]:
    """Cases tried per class over the fault suites that ran."""
    import sys

    out = dict.fromkeys(FAULT_CLASSES, 0)
    for name in FAULT_SUITES:
        short = name.rsplit(".", 1)[-1]
        lists = {id(t): t for m in (name, short) if (t := getattr(sys.modules.get(m), "TALLY", None))}
        for c in (c for t in lists.values() for c in t):
            k = fault_class(short, c)
            out[k] = out.get(k, 0) + 1
    return out


def fault_tally() -> dict[str, int] | None:
    """Outcome counts over the fault suites' TALLY lists, or None when none of them ran."""
    import sys

    counts = {"tried": 0, "refused": 0, "isolated": 0, "survived": 0, "caught": 0, "leaks": 0}
    suites = []
    for name in FAULT_SUITES:
        short = name.rsplit(".", 1)[-1]  # pytest imports a test module as `tests.x` or as `x`
        lists = {id(t): t for m in (name, short) if (t := getattr(sys.modules.get(m), "TALLY", None))}
        if not lists:
            continue
        suites.append(short)
        for c in (c for t in lists.values() for c in t):
            outcome = c["outcome"] if isinstance(c, dict) else c[1]
            counts["tried"] += 1
            if outcome in _LEAK_OUTCOMES or outcome not in counts:
                counts["leaks"] += 1
            else:
                counts[outcome] += 1
    return counts if suites else None


def pytest_terminal_summary(terminalreporter):
    c = fault_tally()
    if c is None:
        return
    terminalreporter.write_line(
        f"fault tally: tried {c['tried']}, refused with file:line {c['refused']}, isolated {c['isolated']}, "
        f"survived {c['survived']}, caught {c['caught']}, leaks {c['leaks']}"
    )
    terminalreporter.write_line(
        "fault classes: " + ", ".join(f"{k} {v}" for k, v in fault_classes().items() if v or k in FAULT_CLASSES)
    )
