"""Dagster UI smoke test (issue 9): `dagster dev` on loopback with a temporary DAGSTER_HOME, the
lens and LVM asset graphs and their checks rendered in headless Chromium, and one small asset
(`lvm_corpus`, capped corpus) materialised through the webserver's GraphQL endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.browser import REPO, artifacts_dir, free_port, launch, require_browser

pytestmark = pytest.mark.e2e

LOCATION = "lens_pipeline"  # workspace.yaml
REPOSITORY = "__repository__"
ASSET_JOB = "__ASSET_JOB"
START_TIMEOUT_S = 240
RUN_TIMEOUT_S = 180
LENS_ASSETS = ("query_suites", "release_bundle", "gate_summary", "per_query", "scores")
LVM_ASSETS = ("lvm_corpus", "lvm_eval_scores", "lvm_checkpoints")
CHECKS = {"gate_summary": ("gate_ece", "gate_pool", "gate_tail"), "lvm_sequences": ("lvm_sequences_leakage",)}

WORKSPACE_Q = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
ASSETS_Q = """{ assetNodes { assetKey { path } groupName
  assetChecksOrError { __typename ... on AssetChecks { checks { name } } } } }"""
LAUNCH_M = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on PythonError { message }
  ... on InvalidSubsetError { message }
  ... on RunConfigValidationInvalid { errors { message } } } }"""
RUN_Q = (
    """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } ... on PythonError { message } } }"""
)


def _gql(port: int, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        out = json.loads(r.read())
    assert not out.get("errors"), out["errors"]
    return out["data"]


def _log_tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    require_browser()
    root = tmp_path_factory.mktemp("ui_smoke")
    home, data = root / "dagster_home", root / "data"
    home.mkdir()
    data.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "LENS_DATA_DIR": str(data),
        "DATA_SOURCE": "sim",
        "LVM_MAX_SENTENCES": "300",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "PYTHONPATH": str(REPO),
    }
    env.pop("PAGER_URL", None)
    log = root / "dagster_dev.log"
    # The dagster CLI of the interpreter running the tests (whichever venv that is).
    dagster = Path(sys.executable).with_name("dagster")
    cmd = [
        str(dagster if dagster.exists() else "dagster"),
        "dev",
        "-w",
        "workspace.yaml",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        status = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"dagster dev exited with {proc.returncode}:\n{_log_tail(log)}")
            try:
                ws = _gql(port, WORKSPACE_Q, timeout=5)["workspaceOrError"]
                entry = next(e for e in ws["locationEntries"] if e["name"] == LOCATION)
                status = entry["loadStatus"]
                if status == "LOADED":
                    err = entry["locationOrLoadError"]
                    assert err["__typename"] == "RepositoryLocation", f"code location failed to load: {err}"
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, StopIteration, KeyError):
                pass
            time.sleep(1.0)
        else:
            pytest.fail(
                f"dagster dev did not load {LOCATION} within {START_TIMEOUT_S}s "
                f"(last status {status}):\n{_log_tail(log)}"
            )
        yield {"port": port, "data": data, "log": log, "proc": proc}
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop dagster dev and everything it started (its own process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
    try:  # stragglers (run workers) left in the group
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    drv = launch(tmp_path_factory.mktemp("ui_chromium_profile"), width=1920, height=2400)
    try:
        yield drv
    finally:
        drv.quit()


def _wait_text(drv, names, timeout: float = 90) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        body = d.execute_script("return document.body ? document.body.innerText : ''")
        return body if all(n in body for n in names) else False

    try:
        return WebDriverWait(drv, timeout, poll_frequency=0.5).until(ready)
    except Exception:  # noqa: BLE001 - report what was there instead
        body = drv.execute_script("return document.body ? document.body.innerText : ''")
        missing = [n for n in names if n not in body]
        pytest.fail(f"{drv.current_url}: {missing} not rendered within {timeout}s; page text:\n{body[:2000]}")


def test_asset_graph_and_checks_render(dagster_dev, browser):
    port = dagster_dev["port"]
    nodes = _gql(port, ASSETS_Q)["assetNodes"]
    groups = {"/".join(n["assetKey"]["path"]): n["groupName"] for n in nodes}
    checks = {
        "/".join(n["assetKey"]["path"]): [c["name"] for c in n["assetChecksOrError"].get("checks", [])] for n in nodes
    }
    for a in LENS_ASSETS:
        assert groups.get(a) == "lens", (a, groups.get(a))
    for a in LVM_ASSETS:
        assert groups.get(a) == "lvm", (a, groups.get(a))
    for asset, names in CHECKS.items():
        assert set(names) <= set(checks.get(asset, [])), (asset, checks.get(asset))

    base = f"http://127.0.0.1:{port}"
    # The lens group's lineage graph: nodes render (the graph only draws what is in view, so at
    # least a good share of the group's assets must show), then each key asset's own page.
    lens_group = sorted(a for a, g in groups.items() if g == "lens")
    browser.get(f"{base}/locations/{LOCATION}/asset-groups/lens")
    _wait_text(browser, ["lens", "Lineage"])
    shown = _wait_count(browser, lens_group, min(8, len(lens_group)))
    _dismiss_modal(browser)
    browser.save_screenshot(str(artifacts_dir() / "dagster_lens_graph.png"))
    for a in ("release_bundle", "gate_summary"):
        browser.get(f"{base}/assets/{a}")
        _wait_text(browser, [a, "Upstream assets", "per_query" if a == "gate_summary" else "hero_table"])
    # The LVM group fits in one view: every asset and its check counts.
    browser.get(f"{base}/locations/{LOCATION}/asset-groups/lvm")
    _wait_text(browser, list(LVM_ASSETS) + ["Asset checks"])
    for asset, names in CHECKS.items():
        browser.get(f"{base}/assets/{asset}?view=checks")
        _wait_text(browser, names)
    _dismiss_modal(browser)
    browser.save_screenshot(str(artifacts_dir() / "dagster_checks.png"))
    assert len(shown) >= min(8, len(lens_group))


def _wait_count(drv, names, k: int, timeout: float = 90) -> list[str]:
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        body = d.execute_script("return document.body ? document.body.innerText : ''")
        got = [n for n in names if n in body.split()]
        return got if len(got) >= k else False

    try:
        return WebDriverWait(drv, timeout, poll_frequency=0.5).until(ready)
    except Exception:  # noqa: BLE001
        body = drv.execute_script("return document.body ? document.body.innerText : ''")
        pytest.fail(f"{drv.current_url}: fewer than {k} of {names} rendered within {timeout}s:\n{body[:2000]}")


def _dismiss_modal(drv) -> None:
    """Close Dagster's first-visit 'Join the community' dialog if it is open (for the screenshot)."""
    drv.execute_script("""for (const b of document.querySelectorAll('button'))
                            if (b.innerText.trim() === 'Skip') { b.click(); break; }""")
    time.sleep(0.5)


def test_materialise_one_asset_through_graphql(dagster_dev):
    port = dagster_dev["port"]
    params = {
        "selector": {
            "repositoryLocationName": LOCATION,
            "repositoryName": REPOSITORY,
            "jobName": ASSET_JOB,
            "assetSelection": [{"path": ["lvm_corpus"]}],
        },
        "mode": "default",
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "test", "value": "ui_smoke"}]},
    }
    res = _gql(port, LAUNCH_M, {"p": params})["launchRun"]
    assert res["__typename"] == "LaunchRunSuccess", res
    run_id = res["run"]["runId"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        r = _gql(port, RUN_Q, {"id": run_id})["runOrError"]
        assert r["__typename"] == "Run", r
        status = r["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1.0)
    assert status == "SUCCESS", f"run {run_id} ended {status}:\n{_log_tail(dagster_dev['log'])}"
    assert (dagster_dev["data"] / "lvm" / "corpus.parquet").is_file()


SCHEDULES_Q = """query($r: RepositorySelector!) {
  schedulesOrError(repositorySelector: $r) { __typename
    ... on Schedules { results { name cronSchedule executionTimezone futureTicks(limit: 2) { results { timestamp } } } }
    ... on PythonError { message } }
  sensorsOrError(repositorySelector: $r) { __typename
    ... on Sensors { results { name minIntervalSeconds } }
    ... on PythonError { message } } }"""


def test_every_schedule_and_sensor_listed_with_next_ticks(dagster_dev):
    """What `dagster dev` shows: every schedule of the code with its US/Eastern next ticks,
    and every sensor."""
    from definitions import defs

    data = _gql(
        dagster_dev["port"], SCHEDULES_Q, {"r": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}}
    )
    schedules = {s["name"]: s for s in data["schedulesOrError"]["results"]}
    sensors = {s["name"] for s in data["sensorsOrError"]["results"]}
    assert set(schedules) == {s.name for s in defs.schedules}
    assert sensors == {s.name for s in defs.sensors}
    for s in schedules.values():
        assert s["executionTimezone"] == "US/Eastern", s
        ticks = [t["timestamp"] for t in s["futureTicks"]["results"]]
        assert len(ticks) == 2 and ticks[0] < ticks[1], s
    assert schedules["weekly_lens_schedule"]["cronSchedule"] == "0 2 * * 0"
