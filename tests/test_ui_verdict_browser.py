"""The Dagster UI as the product's face (issue 23), in headless Chromium: after `lens-eval run`
as `make demo` runs it (a DAGSTER_HOME, so the run is launched through the code location), the
weekly_lens_job page lists the run with its partition, release_verdict leads with the week's
verdict, and a gate check's evaluation names its partition."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import dagster as dg
import pytest

from tests.browser import LOCATION, artifacts_dir, dagster_dev, launch, require_browser, wait_text
from tests.conftest import REPO, new_dagster_home

pytestmark = pytest.mark.e2e
PARTITION = "2026-11-08"


@pytest.fixture(scope="module")
def demo_ui(tmp_path_factory):
    require_browser()
    root = tmp_path_factory.mktemp("ui_verdict")
    home, data = new_dagster_home(root / "dagster_home"), root / "data"
    env = {**os.environ, "LENS_DATA_DIR": str(data), "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO)}
    for k in ("PAGER_URL", "LENS_CONFIG", "LENS_FULL_GRIDS"):
        env.pop(k, None)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "lens_cli",
            "run",
            "--source",
            "sim",
            "--queries-per-suite",
            "30",
            "--partition",
            PARTITION,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode in (0, 3), (p.stdout + p.stderr)[-4000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs(filters=dg.RunsFilter(job_name="weekly_lens_job"))
        rec = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("release_verdict"), asset_partitions=[PARTITION]), limit=1
        ).records[0]
        verdict = rec.asset_materialization.metadata["verdict"].value
    with dagster_dev(home, env, root / "dagster_dev.log") as port:
        drv = launch(tmp_path_factory.mktemp("ui_verdict_chromium"), width=1600, height=2000)
        try:
            yield {"base": f"http://127.0.0.1:{port}", "run_id": run.run_id, "verdict": verdict, "drv": drv}
        finally:
            drv.quit()


def test_job_page_lists_the_demo_run(demo_ui):
    drv = demo_ui["drv"]
    drv.get(f"{demo_ui['base']}/locations/{LOCATION}/jobs/weekly_lens_job/runs")
    text = wait_text(drv, [demo_ui["run_id"][:8], f"partition: {PARTITION}"])
    assert "No runs found" not in text and "Join the Dagster community" not in text
    drv.save_screenshot(str(artifacts_dir() / "dagster_weekly_job_runs.png"))


def test_release_verdict_leads_with_the_verdict(demo_ui):
    drv = demo_ui["drv"]
    head = demo_ui["verdict"].split(":")[0]  # "PUBLISHED v22_... for week 2026-11-08"
    assert head.endswith(f"for week {PARTITION}") and head.split()[0] in ("PUBLISHED", "NOT")
    drv.get(f"{demo_ui['base']}/assets/release_verdict")
    text = wait_text(drv, [head, "failed_gates", "vs_previous_week"])
    # the verdict is the first metadata entry, ahead of the tables
    assert text.index("verdict") < text.index(head) < text.index("failed_gates") < text.index("vs_previous_week")
    drv.save_screenshot(str(artifacts_dir() / "dagster_release_verdict.png"))


def test_gate_check_names_its_partition(demo_ui):
    drv = demo_ui["drv"]
    drv.get(f"{demo_ui['base']}/assets/gate_summary?view=checks&checkDetail=gate_ece")
    text = wait_text(drv, ["Partition", f"(week {PARTITION})"])
    assert re.search(rf"\bPartition\s*\n\s*{PARTITION}\b", text), text[:2500]  # the evaluation's field
    drv.save_screenshot(str(artifacts_dir() / "dagster_gate_check.png"))


def test_the_bundle_site_is_a_link(demo_ui):
    """release_verdict's `site` entry is a link the UI renders (a file:// url, not copy-only text)."""
    from selenium.webdriver.common.by import By

    drv = demo_ui["drv"]
    drv.get(f"{demo_ui['base']}/assets/release_verdict")
    wait_text(drv, ["site", "verdict"])
    links = [a.get_attribute("href") or "" for a in drv.find_elements(By.CSS_SELECTOR, "a[href^='file://']")]
    assert any(h.endswith("/index.html") for h in links), links


def test_a_data_test_check_names_its_partition_and_status(demo_ui):
    drv = demo_ui["drv"]
    drv.get(f"{demo_ui['base']}/assets/hits?view=checks&checkDetail=dbt_hits_unique_key")
    text = wait_text(drv, ["Partition", f"(week {PARTITION})"])
    assert re.search(rf"\bPartition\s*\n\s*{PARTITION}\b", text), text[:2500]
    assert re.search(rf"\b(pass|fail|insufficient) \(week {PARTITION}\)", text), text[:2500]


def test_a_placeholder_in_a_description_survives_markdown(demo_ui):
    """`lvm/checkpoints/<variant>/` in backticks renders as written (bare, markdown ate it)."""
    drv = demo_ui["drv"]
    drv.get(f"{demo_ui['base']}/assets/lvm_checkpoints")
    wait_text(drv, ["lvm/checkpoints/<variant>/"])
