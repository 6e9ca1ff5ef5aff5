"""Shared helpers for the browser tests: find and launch Debian's Chromium headless (Selenium with
Debian's chromedriver), where screenshots go, and one real bundle shared by the site tests.

Chromium: `apt-get install -y chromium chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver).
A missing Chromium skips the browser tests with the reason, except under CI (`CI` set and not
"false"/"0"), where it fails them: CI must run them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from pathlib import Path

import pytest

from tests.conftest import own_dirs

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver", "chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
INSTALL_HINT = "apt-get update && apt-get install -y chromium chromium-driver"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_components(what: str, problems: list[str]) -> None:
    """A test that needs real components (a browser, PostgreSQL, a broker, an S3 server): skip
    with the reasons when any is missing, except under CI, where that is a failure."""
    if problems:
        msg = "; ".join(problems)
        if in_ci():
            pytest.fail(f"CI is set and the {what} test cannot run: {msg}")
        pytest.skip(msg)


def _which(cands) -> str | None:
    for c in cands:
        p = c if os.path.isabs(c) else shutil.which(c)
        if p and os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def chromium_path() -> str | None:
    return _which(CHROMIUM_CANDIDATES)


def chromedriver_path() -> str | None:
    return _which(DRIVER_CANDIDATES)


def require_browser() -> tuple[str, str]:
    """(chromium, chromedriver) or skip (outside CI) / fail (in CI) with the reason."""
    chrome, driver = chromium_path(), chromedriver_path()
    problems = []
    if chrome is None:
        problems.append("Chromium not found (/usr/bin/chromium)")
    if driver is None:
        problems.append("chromedriver not found (/usr/bin/chromedriver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        problems.append("the selenium Python package is not installed (test extra)")
    if problems:
        require_components("browser", [*problems[:-1], f"{problems[-1]}; install with: {INSTALL_HINT}"])
    return chrome, driver


def launch(user_data_dir: Path, width: int = 1280, height: int = 1600):
    """A headless Chromium under Selenium with a fresh profile. The caller quits it."""
    chrome, driver = require_browser()
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for f in CHROMIUM_FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={user_data_dir}")
    opts.add_argument(f"--window-size={width},{height}")
    drv = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    drv.set_page_load_timeout(60)
    return drv


def artifacts_dir() -> Path:
    d = Path(os.environ.get("LENS_TEST_ARTIFACTS") or REPO / ".cache" / "test-artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------
# One real bundle per test session (the simulator chain at 30 queries per suite)
# ----------------------------------------------------------------------------------------------
_BUNDLE: dict[str, Path] = {}


def shared_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """(data_dir, bundle_dir) of a real weekly bundle, built once per session and reused by every
    module that asks (tests copy it before changing anything)."""
    reuse = os.environ.get("LENS_SITE_TEST_DATA")  # dev shortcut: an existing data dir with bundles/
    if reuse and "bundle" not in _BUNDLE:
        bundles = sorted((Path(reuse) / "bundles").glob("v*"), key=lambda p: p.stat().st_mtime)
        assert bundles, f"LENS_SITE_TEST_DATA={reuse}: no bundles/ there"
        _BUNDLE["data"], _BUNDLE["bundle"] = Path(reuse), bundles[-1]
    if "bundle" not in _BUNDLE:
        d = tmp_path_factory.mktemp("site_bundle_data")
        # its own data dir and Dagster instance, never the user's (issue 23)
        with own_dirs(d, tmp_path_factory.mktemp("site_bundle_dagster_home")):
            from lens_assets.run import run_weekly

            res = run_weekly("2026-11-15", queries_per_suite=30, progress=False)
        assert res["bundle"], f"the weekly chain built no bundle: {res.get('errors')}"
        _BUNDLE["data"], _BUNDLE["bundle"] = d, Path(res["bundle"])
    return _BUNDLE["data"], _BUNDLE["bundle"]


def copy_bundle(shared: tuple[Path, Path], dst_root: Path) -> Path:
    """Copy the shared data dir (bundle, published.json) under dst_root; return the bundle copy."""
    data, bundle = shared
    dst = dst_root / "data"
    shutil.copytree(data, dst, symlinks=True, ignore=shutil.ignore_patterns("runs", "staging", "cache"))
    return dst / "bundles" / bundle.name


# ----------------------------------------------------------------------------------------------
# `dagster dev` on a given instance (the UI tests)
# ----------------------------------------------------------------------------------------------
LOCATION = "lens_pipeline"  # workspace.yaml
_WORKSPACE_Q = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def graphql(port: int, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
    import json
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        out = json.loads(r.read())
    assert not out.get("errors"), out["errors"]
    return out["data"]


@contextlib.contextmanager
def dagster_dev(home: Path, env: dict[str, str], log: Path, start_timeout_s: float = 240):
    """`dagster dev -w workspace.yaml` on loopback with DAGSTER_HOME=home; yields its port once the
    code location has loaded; stops it and everything it started (its process group) after."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.error

    port = free_port()
    dagster = Path(sys.executable).with_name("dagster")
    cmd = [str(dagster if dagster.exists() else "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1"]
    full_env = {**env, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO), "DAGSTER_DISABLE_TELEMETRY": "1"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [*cmd, "-p", str(port)], cwd=REPO, env=full_env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dagster dev exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                ws = graphql(port, _WORKSPACE_Q, timeout=5)["workspaceOrError"]
                entry = next(e for e in ws["locationEntries"] if e["name"] == LOCATION)
                if entry["loadStatus"] == "LOADED":
                    assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, StopIteration, KeyError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dagster dev did not load {LOCATION}:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(1.0)
        yield port
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        try:  # stragglers (run workers, code servers) left in the group
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def page_text(drv) -> str:
    return drv.execute_script("return document.body ? document.body.innerText : ''")


def wait_text(drv, names, timeout: float = 90) -> str:
    """Wait until every string of `names` is on the page; fail with what was there."""
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        body = page_text(d)
        return body if all(n in body for n in names) else False

    try:
        return WebDriverWait(drv, timeout, poll_frequency=0.5).until(ready)
    except Exception:  # noqa: BLE001 - report what was there instead
        body = page_text(drv)
        missing = [n for n in names if n not in body]
        pytest.fail(f"{drv.current_url}: {missing} not rendered within {timeout}s; page text:\n{body[:2500]}")
