"""Publish-on-green through the real chain: a broken blocking gate keeps the last green bundle
published and pages P0 exactly once per partition."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO
from tests.fake_pager import FakePager


@pytest.fixture
def pager_receiver():
    with FakePager() as fp:
        yield fp


@pytest.mark.e2e
def test_broken_gate_keeps_last_green_and_pages_once(data_dir, monkeypatch, pager_receiver):
    from lens_assets.run import run_weekly
    from lens_core.common import settings
    from resources.paging import PagerResource

    green = run_weekly("2026-11-08", queries_per_suite=30)
    assert green["success"] and green["published"], green.get("errors")
    pub = json.loads((data_dir / "published.json").read_text())
    assert pub["fingerprint"] == green["fingerprint"]

    monkeypatch.setenv("LENS_CONFIG", str(REPO / "configs" / "broken_gate.yaml"))
    settings._load.cache_clear()
    try:
        pager = PagerResource(url=pager_receiver.url)
        red = run_weekly("2026-11-15", queries_per_suite=30, pager=pager)
        assert not red["success"] and not red["published"]
        assert any("gate_pool" in c for c in red["failed_checks"])
        assert json.loads((data_dir / "published.json").read_text())["fingerprint"] == green["fingerprint"]
        # a retry of the same partition, still red, does not page again
        run_weekly("2026-11-15", queries_per_suite=30, pager=pager)
    finally:
        settings._load.cache_clear()
    monkeypatch.delenv("LENS_CONFIG")
    fixed = run_weekly("2026-11-15", queries_per_suite=30, pager=PagerResource(url=pager_receiver.url))
    assert fixed["published"]
    assert [e["dedup_key"] for e in pager_receiver.events("resolve")] == ["lens:publish:2026-11-15"]
    triggers = pager_receiver.events("trigger")
    assert len(triggers) == 1 and triggers[0]["dedup_key"] == "lens:publish:2026-11-15"
    assert triggers[0]["payload"]["severity"] == "critical"
    assert green["fingerprint"] in triggers[0]["payload"]["summary"]
