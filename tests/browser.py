"""Shared helpers for the browser tests: find and launch Debian's Chromium headless (Selenium with
Debian's chromedriver), where screenshots go, and one real bundle shared by the site tests.

Chromium: `apt-get install -y chromium chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver).
A missing Chromium skips the browser tests with the reason, except under CI (`CI` set and not
"false"/"0"), where it fails them: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

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
        msg = "; ".join(problems) + f"; install with: {INSTALL_HINT}"
        if in_ci():
            pytest.fail(f"CI is set and the browser test cannot run: {msg}")
        pytest.skip(msg)
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
        old = os.environ.get("LENS_DATA_DIR")
        os.environ["LENS_DATA_DIR"] = str(d)
        try:
            from lens_assets.run import run_weekly

            res = run_weekly("2026-11-15", queries_per_suite=30, progress=False)
        finally:
            if old is None:
                os.environ.pop("LENS_DATA_DIR", None)
            else:
                os.environ["LENS_DATA_DIR"] = old
        assert res["bundle"], f"the weekly chain built no bundle: {res.get('errors')}"
        _BUNDLE["data"], _BUNDLE["bundle"] = d, Path(res["bundle"])
    return _BUNDLE["data"], _BUNDLE["bundle"]


def copy_bundle(shared: tuple[Path, Path], dst_root: Path) -> Path:
    """Copy the shared data dir (bundle, published.json) under dst_root; return the bundle copy."""
    data, bundle = shared
    dst = dst_root / "data"
    shutil.copytree(data, dst, symlinks=True, ignore=shutil.ignore_patterns("runs", "staging", "cache"))
    return dst / "bundles" / bundle.name
