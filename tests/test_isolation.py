"""Tests keep out of the user's instance and data (issue 23): the session runs on its own temporary
LENS_DATA_DIR and DAGSTER_HOME, and conftest's session fixture fails the run when ./data or
./dagster_home changed byte-for-byte."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, SESSION_ROOT, USER_TREES, tree_changes, tree_digest


def test_session_env_points_at_temporary_directories():
    for name in ("LENS_DATA_DIR", "DAGSTER_HOME"):
        p = Path(os.environ[name]).resolve()
        assert p.is_relative_to(SESSION_ROOT.resolve()), f"{name}={p}"
        assert not p.is_relative_to(REPO), f"{name}={p} is inside the repo"
    assert {t.name for t in USER_TREES} == {"data", "dagster_home"}


def test_default_data_dir_of_a_child_process_is_not_the_repo():
    """A subprocess (the CLI, `dagster dev`) inherits the session's directories."""
    out = subprocess.run(
        [sys.executable, "-c", "from lens_core.common.settings import data_dir; print(data_dir())"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(SESSION_ROOT.resolve())


def test_tree_digest_sees_every_byte(tmp_path):
    root = tmp_path / "home"
    assert tree_digest(root) == {}
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "runs.db").write_bytes(b"\x00" * 4096)
    (root / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    before = tree_digest(root)
    assert tree_changes(before, tree_digest(root)) == []
    with open(root / "sub" / "runs.db", "r+b") as f:  # one byte, same size
        f.seek(100)
        f.write(b"\x01")
    (root / "new.log").write_text("x")
    (root / "dagster.yaml").unlink()
    assert tree_changes(before, tree_digest(root)) == ["+new.log", "-dagster.yaml", "~sub/runs.db"]


def test_make_test_does_not_export_the_user_directories():
    """`make test` runs pytest without the Makefile's LENS_DATA_DIR/DAGSTER_HOME (./data,
    ./dagster_home): the recipe unsets them, and the session fixture above checks the trees."""
    out = subprocess.run(
        ["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ}
    )
    assert out.returncode == 0, out.stderr
    pytest_lines = [ln for ln in out.stdout.splitlines() if "-m pytest" in ln]
    assert pytest_lines, out.stdout
    for ln in pytest_lines:
        assert "-u LENS_DATA_DIR" in ln and "-u DAGSTER_HOME" in ln, ln
