"""The transparency site opened from disk in Debian's Chromium (headless, Selenium + chromedriver):
leaderboard rows, CI whiskers and gate statuses in the rendered DOM, a narrow screen, no network,
and a screenshot saved as a test artifact ($LENS_TEST_ARTIFACTS or .cache/test-artifacts/site.png)."""

from __future__ import annotations

import base64

import polars as pl
import pytest

from lens_core.publish.site import build_site
from tests.browser import artifacts_dir, copy_bundle, launch, require_browser, shared_bundle


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    require_browser()  # skip (or fail under CI) before building anything
    b = copy_bundle(shared_bundle(tmp_path_factory), tmp_path_factory.mktemp("site_browser"))
    return b, build_site(b)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    drv = launch(tmp_path_factory.mktemp("chromium_profile"), width=1280, height=1600)
    try:
        yield drv
    finally:
        drv.quit()


def _open(driver, index):
    driver.get(index.resolve().as_uri())
    assert driver.execute_script("return document.readyState") == "complete"


def test_leaderboard_whiskers_and_gates_render(site, driver):
    bundle, index = site
    _open(driver, index)
    scores = pl.read_parquet(bundle / "scores.parquet")
    systems = sorted(scores["system"].unique().to_list())
    gates = pl.read_csv(bundle / "tables/gates.csv")
    dom = driver.execute_script("""
      const rows = [...document.querySelectorAll('tr.lb-row[data-slice="all"]')].map(tr => ({
          system: tr.dataset.system, text: tr.innerText, h: tr.getBoundingClientRect().height}));
      const svg = document.querySelector('svg.whiskers[data-slice="all"][data-metric="ndcg_10"]');
      const sr = svg.getBoundingClientRect();
      const whiskers = [...svg.querySelectorAll('g.whisker')].map(g => {
          const c = g.querySelector('circle.pt').getBoundingClientRect();
          const l = g.querySelector('line.ci').getBoundingClientRect();
          return {system: g.dataset.system, cx: c.x + c.width / 2, cw: c.width, lx0: l.x, lx1: l.x + l.width,
                  inside: c.x >= sr.x && c.x + c.width <= sr.x + sr.width && c.y >= sr.y && c.y + c.height <= sr.y + sr.height};
      });
      const gates = [...document.querySelectorAll('tr.gate-row')].map(tr => {
          const b = tr.querySelector('.badge');
          return {gate: tr.dataset.gate, subject: tr.dataset.subject, status: tr.dataset.status,
                  badge: b.innerText.trim(), color: getComputedStyle(b).backgroundColor,
                  visible: tr.getBoundingClientRect().height > 0};
      });
      return {rows, whiskers, gates, title: document.title,
              fp: document.getElementById('fingerprint').innerText,
              allWhiskers: document.querySelectorAll('svg.whiskers g.whisker').length,
              resources: performance.getEntriesByType('resource').map(e => e.name)};
    """)
    # leaderboard: one visible row per system, the system's name in it
    assert sorted(r["system"] for r in dom["rows"]) == systems
    assert all(r["h"] > 0 and r["system"] in r["text"] for r in dom["rows"])
    # whiskers: one per system, drawn inside the plot, the point between the whisker's ends
    assert sorted(w["system"] for w in dom["whiskers"]) == systems
    for w in dom["whiskers"]:
        assert w["inside"] and w["cw"] > 0, w
        assert w["lx0"] - 1 <= w["cx"] <= w["lx1"] + 1, w
        assert w["lx1"] - w["lx0"] > 1, w  # a visible CI
    assert dom["allWhiskers"] == 2 * scores["system"].n_unique() * scores["slice"].n_unique()
    # gates: every result with its status, the badge saying it, coloured by it
    assert len(dom["gates"]) == gates.height
    want = sorted((g["gate"], g["subject"] or "", g["status"]) for g in gates.iter_rows(named=True))
    assert sorted((g["gate"], g["subject"], g["status"]) for g in dom["gates"]) == want
    colors = {}
    for g in dom["gates"]:
        assert g["visible"] and g["badge"] == g["status"], g
        colors.setdefault(g["status"], set()).add(g["color"])
    assert all(len(c) == 1 for c in colors.values())
    if "pass" in colors and "fail" in colors:
        assert colors["pass"] != colors["fail"]
    assert dom["fp"] in dom["title"] and dom["fp"] == bundle.name
    assert [r for r in dom["resources"] if not r.startswith("data:")] == []  # nothing fetched


def test_narrow_screen_has_no_page_level_horizontal_scroll(site, driver):
    _, index = site
    driver.set_window_size(400, 900)
    try:
        _open(driver, index)
        over = driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth, "
            "document.querySelector('table.leaderboard').closest('.tw').scrollWidth > "
            "document.querySelector('table.leaderboard').closest('.tw').clientWidth]"
        )
        assert over[0] <= over[1] + 1, over  # wide tables scroll inside their own box
        assert over[2]
    finally:
        driver.set_window_size(1280, 1600)


def test_screenshot_artifact(site, driver):
    _, index = site
    _open(driver, index)
    height = min(int(driver.execute_script("return document.documentElement.scrollHeight")), 6000)
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1},
        },
    )
    data = base64.b64decode(shot["data"])
    out = artifacts_dir() / "site.png"
    tmp = out.with_suffix(".png.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    print(f"screenshot: {out}")


def test_missing_chromium_skips_locally_but_fails_under_ci(monkeypatch):
    import tests.browser as br

    monkeypatch.setattr(br, "CHROMIUM_CANDIDATES", ("/nonexistent/chromium",))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        br.require_browser()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="Chromium not found"):
        br.require_browser()
