"""The static transparency site (issue 9) from a real bundle, without a browser: content,
escaping, self-containment, missing artifacts, optional sections, publication and the CLI."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from lens_cli.main import main
from lens_cli.site import register
from lens_core.common.contracts import LVM_EVAL_SCHEMA
from lens_core.publish.site import SiteError, build_site, publish_site, render_site
from tests.browser import copy_bundle, shared_bundle

PLANTED = "<script>alert(1)</script>"
PLANTED_REASON = '<img src=x onerror="alert(2)">'


class _Collect(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: (v or "") for k, v in attrs}))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> _Collect:
    c = _Collect()
    c.feed(page)
    return c


def with_class(doc: _Collect, cls: str, tag: str | None = None) -> list[dict[str, str]]:
    return [a for t, a in doc.tags if cls in a.get("class", "").split() and (tag is None or t == tag)]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return shared_bundle(tmp_path_factory)


@pytest.fixture
def bundle(shared, tmp_path) -> Path:
    return copy_bundle(shared, tmp_path)


@pytest.fixture(scope="module")
def built(shared, tmp_path_factory) -> tuple[Path, str, _Collect]:
    b = copy_bundle(shared, tmp_path_factory.mktemp("site_built"))
    index = build_site(b)
    page = index.read_text()
    return b, page, parse(page)


def test_site_written_in_the_bundle_and_ascii(built):
    b, page, _ = built
    assert (b / "site" / "index.html").is_file()
    assert page.isascii()
    assert page.startswith("<!DOCTYPE html>")


def test_leaderboard_rows_for_every_system_and_slice(built):
    b, _, doc = built
    scores = pl.read_parquet(b / "scores.parquet")
    systems = set(scores["system"].unique().to_list())
    slices = set(scores["slice"].unique().to_list())
    rows = with_class(doc, "lb-row", "tr")
    assert {(r["data-system"], r["data-slice"]) for r in rows} == {(s, x) for s in systems for x in slices}
    assert len(rows) == len(systems) * len(slices)
    # slice `all` ranked by nDCG@10, as the scores say
    want = (
        scores.filter((pl.col("slice") == "all") & (pl.col("metric") == "ndcg_10"))
        .sort(["mean", "system"], descending=[True, False])["system"]
        .to_list()
    )
    assert [r["data-system"] for r in rows if r["data-slice"] == "all"] == want


def test_whiskers_match_the_scores(built):
    b, _, doc = built
    scores = pl.read_parquet(b / "scores.parquet")
    n_sys = scores["system"].n_unique()
    n_slices = scores["slice"].n_unique()
    whiskers = with_class(doc, "whisker", "g")
    assert len(whiskers) == n_sys * n_slices * 2  # nDCG@10 and SLA-Recall@50 per slice
    svgs = with_class(doc, "whiskers", "svg")
    assert len(svgs) == n_slices * 2
    ref = {(r["system"], r["metric"]): r for r in scores.filter(pl.col("slice") == "all").iter_rows(named=True)}
    first_slice_all = whiskers[: 2 * n_sys]  # slice `all` comes first
    assert {w["data-metric"] for w in first_slice_all} == {"ndcg_10", "sla_recall_50"}
    for w in first_slice_all:
        r = ref[(w["data-system"], w["data-metric"])]
        assert float(w["data-mean"]) == pytest.approx(r["mean"], abs=1e-6)
        assert float(w["data-ci-low"]) == pytest.approx(r["ci_low"], abs=1e-6)
        assert float(w["data-ci-high"]) == pytest.approx(r["ci_high"], abs=1e-6)
        assert float(w["data-ci-low"]) <= float(w["data-mean"]) <= float(w["data-ci-high"])
    # every whisker with a CI draws its line and both caps
    assert len(with_class(doc, "ci", "line")) == len(whiskers)
    assert len(with_class(doc, "cap", "line")) == 2 * len(whiskers)


def test_gate_statuses_match_gates_csv(built):
    b, _, doc = built
    gates = pl.read_csv(b / "tables/gates.csv")
    rows = with_class(doc, "gate-row", "tr")
    assert len(rows) == gates.height
    got = sorted((r["data-gate"], r["data-subject"], r["data-status"], r["data-blocking"]) for r in rows)
    want = sorted(
        (g["gate"], g["subject"] or "", g["status"], str(g["blocking"]).lower()) for g in gates.iter_rows(named=True)
    )
    assert got == want
    summary = {r["data-gate"]: r["data-status"] for r in with_class(doc, "gate-summary-row", "tr")}
    assert set(summary) == set(gates["gate"].to_list())
    for g in set(gates.filter(pl.col("status") == "fail")["gate"].to_list()):
        assert summary[g] == "fail"


def test_latency_heroes_pool_and_calibration_sections(built):
    b, page, doc = built
    scores = pl.read_parquet(b / "scores.parquet")
    assert {r["data-system"] for r in with_class(doc, "lat-row", "tr")} == set(scores["system"].unique().to_list())
    heroes = pl.read_csv(b / "tables/heroes.csv")
    assert [r["data-pack"] for r in with_class(doc, "hero-row", "tr")] == heroes["pack"].to_list()
    rules = pl.read_parquet(b / "tables/promotion_rules.parquet")
    assert {d["data-pack"] for d in with_class(doc, "rules", "details")} == set(rules["pack"].unique().to_list())
    assert 'class="pool-counts"' in page
    pngs = sorted((b / "calibration").glob("reliability_*.png"))
    imgs = [a["src"] for t, a in doc.tags if t == "img"]
    assert len(imgs) == len(pngs) > 0
    assert all(s.startswith("data:image/png;base64,") for s in imgs)


def test_fingerprint_publication_state_and_attestation_link(built):
    b, page, doc = built
    att = json.loads((b / "attestation.json").read_text())
    fp = att["fingerprint"]
    assert f"<title>Lens release {fp}</title>" in page
    assert f'<code id="fingerprint">{fp}</code>' in page
    link = next(a for t, a in doc.tags if t == "a" and a.get("id") == "attestation-link")
    assert link["href"] == "../attestation.json"
    assert ((b / "site") / link["href"]).resolve() == (b / "attestation.json").resolve()
    state = next(a for t, a in doc.tags if a.get("id") == "publication-state")
    published = (
        json.loads((b.parent.parent / "published.json").read_text())["fingerprint"]
        if (b.parent.parent / "published.json").is_file()
        else None
    )
    assert state["data-state"] == ("ok" if published == fp else "bad" if not att["all_blocking_green"] else "warn")


def test_self_contained_no_network_references(built):
    _, page, doc = built
    for tag, attrs in doc.tags:
        for k in ("src", "href", "action", "data", "poster", "srcset"):
            v = attrs.get(k)
            if v is None:
                continue
            assert not re.match(r"^\s*([a-z][a-z0-9+.-]*:|//)", v, re.I) or v.startswith("data:image/"), (tag, k, v)
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page, re.I)
    assert "@import" not in page and "url(" not in page
    assert "<script" not in page.lower()
    assert "default-src 'none'" in page  # CSP: no scripts, no fetches even if something slipped in
    assert "95% paired bootstrap" in page  # the how-to-read note


def test_planted_html_is_escaped(bundle):
    q = pl.read_parquet(bundle / "queries.parquet")
    q = q.with_columns((pl.lit(PLANTED + " q=") + pl.col("qid")).alias("text"))
    q.write_parquet(bundle / "queries.parquet")
    g = pl.read_csv(bundle / "tables/gates.csv")
    g.with_columns(pl.lit(PLANTED_REASON).alias("reason")).write_csv(bundle / "tables/gates.csv")
    page = build_site(bundle).read_text()
    doc = parse(page)
    assert PLANTED not in page and "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page
    assert not [a for t, a in doc.tags if t == "script" or any(k.startswith("on") for k in a)]
    texts = "".join(doc.text)
    hard = with_class(doc, "query-row", "tr")
    assert hard and all(f"{PLANTED} q={r['data-qid']}" in texts for r in hard)


def test_missing_artifacts_are_named_on_the_page(bundle):
    (bundle / "tables/gates.csv").unlink()
    shutil.rmtree(bundle / "calibration")
    (bundle / "comparisons.parquet").write_bytes(b"not parquet")
    page = build_site(bundle).read_text()
    doc = parse(page)
    missing = {a["data-missing"] for a in with_class(doc, "missing")}
    assert {
        "tables/gates.csv",
        "calibration/calibration.parquet",
        "calibration/parity.parquet",
        "calibration/reliability_*.png",
        "comparisons.parquet",
    } <= missing
    assert "missing: tables/gates.csv" in page
    assert "unreadable: comparisons.parquet" in page
    assert 'id="missing-summary"' in page
    # the gates still show, from the attestation, and the leaderboard still renders
    assert len(with_class(doc, "gate-row", "tr")) == len(json.loads((bundle / "attestation.json").read_text())["gates"])
    assert with_class(doc, "lb-row", "tr")


def test_optional_sections_say_when_absent(built):
    _, page, doc = built
    absent = {a.get("data-absent") for a in with_class(doc, "absent")}
    assert "tables/pool_audit.csv" in absent or 'class="pool-audit"' in page
    if "tables/canary_steps.csv" not in absent:  # the canary ran: one block per test arm, timeline or why not
        steps = pl.read_csv(built[0] / "tables/canary_steps.csv")
        tests = set(steps["test"].to_list()) if "test" in steps.columns else {"test arm"}
        assert {d["data-test"] for d in with_class(doc, "canary", "div")} == tests
        assert with_class(doc, "canary-timeline", "svg") or "no judged canary windows" in page
    assert "lvm/eval_scores.parquet" in absent or with_class(doc, "lvm-row", "tr")


def _canary_tables():
    from lens_core.decide.canary import CanaryStream, run_ladder

    def arms(n, seed, effect=0.0):
        rng = np.random.default_rng(seed)
        repo = [f"repo{r:03d}" for r in rng.integers(0, 100, n)]
        c = rng.uniform(0.3, 0.9, n)
        conf = rng.uniform(0.2, 0.6, n)
        return pl.DataFrame(
            {
                "qid": [f"q{seed}_{i}" for i in range(n)] * 2,
                "repo": repo * 2,
                "arm": ["control"] * n + ["test"] * n,
                "sla_recall_50": np.concatenate([c, c + effect + rng.normal(0, 0.05, n)]),
                "lat_ms": np.concatenate([np.full(n, 30.0), np.full(n, 30.5)]),
                "confidence": np.concatenate([conf, conf + rng.normal(0, 0.005, n)]),
                "calib_ms": np.concatenate([np.full(n, 0.1), np.full(n, 0.1)]),
            }
        )

    none = pl.DataFrame(schema={"qid": pl.String, "arm": pl.String, "confidence": pl.Float64, "label": pl.Int64})
    res = run_ladder(
        CanaryStream(queries=arms(3000, 1, effect=-0.3), labels=none, aa_queries=arms(600, 99), aa_labels=none)
    )
    return res


def test_canary_pool_audit_and_lvm_render_when_present(bundle):
    res = _canary_tables()
    assert res.windows.height > 0
    for name, df in (("steps", res.steps), ("windows", res.windows), ("decisions", res.decisions)):
        df.with_columns(pl.lit("lens_v22_tail").alias("test")).write_csv(bundle / f"tables/canary_{name}.csv")
    audit = pl.DataFrame(
        {
            "system": ["lens_v22", "all"],
            "previous": [10, 20],
            "current": [11, 21],
            "added": [2, 3],
            "removed": [1, 2],
            "kept": [9, 18],
            "jaccard": [0.75, 0.78],
        }
    )
    audit.write_csv(bundle / "tables/pool_audit.csv")
    lvm = bundle.parent.parent / "lvm"
    lvm.mkdir(exist_ok=True)
    rows = [
        {
            "model": m,
            "lane": lane,
            "k": k,
            "hit": 0.1 * k / 10 + i * 0.01,
            "ci_low": 0.0,
            "ci_high": 0.5,
            "n_queries": 100,
            "n_candidates": 900,
            "p95_ms": 0.8,
        }
        for i, m in enumerate(("memory_gru", "copy_last"))
        for lane in ("all", "lane<b>")
        for k in (1, 5, 10)
    ]
    import pyarrow.parquet as pq

    pq.write_table(pl.DataFrame(rows).to_arrow().cast(LVM_EVAL_SCHEMA), lvm / "eval_scores.parquet")
    page = build_site(bundle).read_text()
    doc = parse(page)
    cells = with_class(doc, "cw", "rect")
    assert len(cells) == res.windows.height
    assert [c["data-status"] for c in cells] == res.windows["status"].to_list()
    assert with_class(doc, "canary-timeline", "svg")[0]["data-test"] == "lens_v22_tail"
    last = res.decisions.tail(1)["action"].item()
    assert f'data-status="{last}"' in page
    assert 'class="pool-audit"' in page and "0.7500" in page
    assert [r["data-model"] for r in with_class(doc, "lvm-row", "tr")] == ["memory_gru", "copy_last"]
    assert "lane&lt;b&gt;" in page and "lane<b>" not in page
    assert not {"tables/canary_steps.csv", "tables/pool_audit.csv"} & {
        a.get("data-absent") for a in with_class(doc, "absent")
    }


def test_empty_or_absent_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(SiteError, match="no such bundle directory"):
        build_site(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SiteError, match="not a bundle"):
        build_site(tmp_path / "empty")
    assert not (tmp_path / "empty" / "site").exists()


def test_failed_build_keeps_the_previous_page(bundle, tmp_path):
    out = tmp_path / "out"
    first = build_site(bundle, out_dir=out)
    before = first.read_text()
    with pytest.raises(SiteError):
        build_site(tmp_path / "nope", out_dir=out)
    assert first.read_text() == before
    assert [p.name for p in out.iterdir()] == ["index.html"]  # no temp file left behind
    # a custom out dir links back to the bundle's attestation relatively
    href = re.search(r'id="attestation-link" href="([^"]+)"', before).group(1)
    assert (out / href).resolve() == (bundle / "attestation.json").resolve()


def test_publish_site_serves_the_published_bundle(bundle):
    data = bundle.parent.parent
    pointer = data / "published.json"
    if not pointer.is_file():
        pointer.write_text(json.dumps({"fingerprint": bundle.name, "bundle": f"bundles/{bundle.name}"}))
    fp = json.loads(pointer.read_text())["fingerprint"]
    served = publish_site(data)
    assert served == data / "site" / "index.html"
    page = served.read_text()
    assert f'<code id="fingerprint">{fp}</code>' in page
    assert 'href="attestation.json"' in page and (data / "site" / "attestation.json").is_file()
    assert (data / "bundles" / fp / "site" / "index.html").is_file()
    first_target = (data / "site").resolve()
    publish_site(data)  # republish: swapped in, the old copy removed
    assert (data / "site").resolve() != first_target and not first_target.exists()
    assert len([p for p in data.iterdir() if p.name.startswith(".site")]) == 1
    pointer.unlink()
    with pytest.raises(SiteError, match="no published bundle"):
        publish_site(data)


def test_cli_site_command(bundle, tmp_path, capsys):
    import argparse

    assert main(["site", str(bundle), "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "o" / "index.html")
    assert main(["site", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such bundle directory" in err
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    args = p.parse_args(["site", str(bundle)])
    assert args.func(args) == 0 and (bundle / "site" / "index.html").is_file()


def test_render_is_deterministic_apart_from_build_time(bundle):
    assert render_site(bundle, now=0) == render_site(bundle, now=0)


def test_verify_still_holds_after_building_the_site(bundle, shared):
    from lens_core.publish.bundle import verify

    build_site(bundle)
    assert verify(bundle, data_dir=shared[0]) == []  # the copy leaves runs/ behind (issue 18: verify checks them)
