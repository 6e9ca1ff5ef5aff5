"""What the Dagster UI shows about each asset and check (issue 23), without a browser:

* no description of the code location has a `<placeholder>` outside backticks (the UI's markdown
  would eat it: "bundles/<fingerprint>/" renders as "bundles//");
* every column of every table asset carries its description from `contracts.COLUMN_DOCS`;
* links the UI renders clickable (a file:// url), no integer the UI would round, CI whiskers as a PNG;
* after one `lens-eval run` (as `make demo` runs it): every table's column schema is described,
  every check evaluation names its partition in its metadata and on its one description line,
  nothing insufficient shows as a pass, and the sensors' cursors stay small.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow as pa
import pytest

from lens_core.common import contracts
from lens_core.common.contracts import COLUMN_DOCS
from tests.conftest import REPO, new_dagster_home

PARTITION = "2026-11-08"
_PLACEHOLDER = re.compile(r"(?<!\\)<[A-Za-z_][^<>\n]*>")


def unescaped_placeholders(text: str | None) -> list[str]:
    """`<word ...>` outside code spans and fences, not backslash-escaped: what markdown eats."""
    if not text:
        return []
    bare = re.sub(r"```.*?```", "", text, flags=re.S)
    bare = re.sub(r"(`+)(?:(?!\1).)+?\1", "", bare, flags=re.S)
    return _PLACEHOLDER.findall(bare)


def test_the_placeholder_finder():
    assert unescaped_placeholders("Writes bundles/<fingerprint>/.") == ["<fingerprint>"]
    assert unescaped_placeholders("run key `job:<date>`") == []
    assert unescaped_placeholders("```\nmonitoring/<job>/\n```") == []
    assert unescaped_placeholders("lat_ms <= sla_ms, min(rank) <> 1, a < b > c") == []
    assert unescaped_placeholders(r"escaped \<date>") == []
    assert unescaped_placeholders("key lens:<asset>:<check>") == ["<asset>", "<check>"]


def _descriptions() -> list[tuple[str, str]]:
    from definitions import defs

    graph = defs.resolve_asset_graph()
    out = [(f"asset {k.to_user_string()}", graph.get(k).description or "") for k in graph.get_all_asset_keys()]
    out += [(f"check {k.to_user_string()}", graph.get_check_spec(k).description or "") for k in graph.asset_check_keys]
    out += [(f"job {j.name}", j.description or "") for j in defs.resolve_all_job_defs()]
    out += [(f"schedule {s.name}", s.description or "") for s in defs.schedules]
    out += [(f"sensor {s.name}", s.description or "") for s in defs.sensors]
    out += [(f"column {c}", d) for c, d in COLUMN_DOCS.items()]
    return out


def test_no_description_has_an_unescaped_placeholder():
    descs = _descriptions()
    assert sum(n.startswith("check ") for n, _ in descs) > 50 and sum(n.startswith("schedule ") for n, _ in descs) > 10
    bad = {name: unescaped_placeholders(d) for name, d in descs if unescaped_placeholders(d)}
    assert not bad, f"placeholders the UI's markdown eats (put them in backticks): {bad}"


def test_every_check_spec_has_a_one_line_description():
    from definitions import defs

    graph = defs.resolve_asset_graph()
    for k in graph.asset_check_keys:
        d = graph.get_check_spec(k).description
        assert d and "\n" not in d.strip(), k


# ------------------------------------------------------------------------------------------- columns
def _contract_schemas() -> dict[str, pa.Schema]:
    return {n: v for n, v in vars(contracts).items() if isinstance(v, pa.Schema)}


def test_every_contract_column_has_a_description():
    from lens_core.decide.canary import DECISIONS_SCHEMA, WINDOWS_SCHEMA
    from lens_core.stats.compare import OUTPUT_SCHEMA

    schemas = _contract_schemas()
    assert len(schemas) >= 10
    names = {f.name for s in schemas.values() for f in s}
    names |= set(OUTPUT_SCHEMA) | set(WINDOWS_SCHEMA) | set(DECISIONS_SCHEMA)
    names |= {f"{m}_ci_{b}" for m in contracts.HERO_TABLE_METRICS for b in ("low", "high")}
    names |= set(contracts.PER_QUERY_DIAGNOSTICS) | set(contracts.POOL_COUNTS_COLUMNS)
    missing = sorted(n for n in names if not COLUMN_DOCS.get(n, "").strip())
    assert not missing, missing
    assert all(d == " ".join(d.split()) for d in COLUMN_DOCS.values())  # one line each


def test_column_schema_carries_the_descriptions():
    from lens_assets.metadata import column_schema, table_metadata

    ts = column_schema(contracts.SCORES_SCHEMA)
    assert [c.name for c in ts.columns] == [f.name for f in contracts.SCORES_SCHEMA]
    assert all(c.description == COLUMN_DOCS[c.name] for c in ts.columns)
    df = pl.DataFrame({"system": ["a"], "ndcg_10_ci_low": [0.1], "not_a_documented_column": [1]})
    cols = {c.name: c for c in table_metadata(df)["dagster/column_schema"].columns}
    assert "95%" in cols["ndcg_10_ci_low"].description and cols["not_a_documented_column"].description is None


# ------------------------------------------------------------------------------------------- values
def test_file_links(tmp_path):
    from lens_assets.metadata import file_url

    site = tmp_path / "site" / "index.html"
    site.parent.mkdir()
    site.write_text("<html></html>")
    u = file_url(site)
    assert isinstance(u, dg.UrlMetadataValue) and u.value == site.absolute().as_uri() and u.value.startswith("file:///")


def _scores() -> pl.DataFrame:
    rows = []
    for i, sysname in enumerate(("lens_v22", "lexical_pack_a", "router_pack_b")):
        for m, base in (("ndcg_10", 0.5), ("sla_recall_50", 0.7)):
            mean = base + 0.02 * i
            rows.append({"system": sysname, "slice": "all", "metric": m, "mean": mean, "ci_low": mean - 0.03})
            rows[-1].update({"ci_high": mean + 0.03, "n": 90})
    return pl.DataFrame(rows)


def test_ci_whiskers_are_a_small_png():
    from lens_assets.metadata import ci_whiskers_markdown

    md = ci_whiskers_markdown(_scores(), title=f"week {PARTITION}")
    m = re.fullmatch(r"!\[95% CI whiskers\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert m, md[:200]
    png = base64.b64decode(m.group(1))
    assert png.startswith(b"\x89PNG") and len(png) < 80_000
    assert ci_whiskers_markdown(pl.DataFrame(schema=_scores().schema)).startswith("_no CI whiskers")


# ------------------------------------------------------------------------------------------- dbt checks
def _write(path: Path, schema: pa.Schema, rows: list[dict]) -> Path:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def test_a_data_test_with_nothing_to_judge_is_insufficient_never_a_pass(tmp_path):
    from dbt_like_checks import load_spec, run_tests
    from dbt_like_checks.checks import merge_partition_results, to_check_result

    spec = load_spec()
    empty = _write(tmp_path / "a" / "qrels.parquet", contracts.QRELS_SCHEMA, [])
    row = {"qid": "q1", "repo": "r", "path": "p.py", "start_line": 1, "end_line": 2, "rel": 1, "source": "sim"}
    full = _write(tmp_path / "b" / "qrels.parquet", contracts.QRELS_SCHEMA, [row])
    names = ["accepted_values_rel", "row_count"]
    thin = {r.name: r for r in run_tests({"qrels": empty}, spec, tables=["qrels"], names=names)}
    ok = {r.name: r for r in run_tests({"qrels": full}, spec, tables=["qrels"], names=names)}
    r = thin["accepted_values_rel"]
    assert r.passed and r.subjects == 0 and r.status == "insufficient"  # no failing row, nothing judged
    assert thin["row_count"].status == "pass" and thin["row_count"].subjects is None  # its count is the subject
    assert ok["accepted_values_rel"].status == "pass" and ok["accepted_values_rel"].subjects == 1

    key = dg.AssetKey("qrels")
    res = to_check_result(r, key, [PARTITION])
    assert not res.passed and res.severity == dg.AssetCheckSeverity.WARN  # not green, does not block
    assert res.description.startswith(f"insufficient (week {PARTITION}): no rows of qrels to judge")
    assert "\n" not in res.description
    assert {"partition", "status", "subjects"} <= set(res.metadata)
    assert res.metadata["partition"].value == PARTITION and res.metadata["status"].value == "insufficient"
    passed = to_check_result(ok["accepted_values_rel"], key, [PARTITION])
    assert passed.passed and passed.description.startswith(f"pass (week {PARTITION}): 1 row(s) judged -- ")
    unpart = to_check_result(ok["accepted_values_rel"], key, [None])
    assert unpart.metadata["partition"].value == "unpartitioned" and "(unpartitioned)" in unpart.description

    # over a partition range: insufficient only when no partition had a row to judge
    both_empty = merge_partition_results([("2026-11-01", [r]), (PARTITION, [r])])[0]
    assert both_empty.status == "insufficient"
    one_full = merge_partition_results([("2026-11-01", [r]), (PARTITION, [ok["accepted_values_rel"]])])[0]
    assert one_full.status == "pass" and one_full.subjects == 1
    rng = to_check_result(one_full, key, ["2026-11-01", PARTITION])
    assert rng.metadata[
        "partition"
    ].value == f"2026-11-01..{PARTITION} (2)" and f"(week 2026-11-01..{PARTITION} (2))" in (rng.description)


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def demo_instance(tmp_path_factory):
    """One simulated week through `lens-eval run` (as `make demo`), on its own data and instance."""
    root = tmp_path_factory.mktemp("ui_metadata")
    home, data = new_dagster_home(root / "dagster_home"), root / "data"
    env = {**os.environ, "LENS_DATA_DIR": str(data), "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO)}
    for k in ("PAGER_URL", "LENS_CONFIG", "LENS_FULL_GRIDS"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "lens_cli", "run", "--source", "sim", "--queries-per-suite", "30"]
    p = subprocess.run([*cmd, "--partition", PARTITION], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode in (0, 3), (p.stdout + p.stderr)[-4000:]
    old = {k: os.environ.get(k) for k in ("LENS_DATA_DIR", "DAGSTER_HOME")}
    os.environ["LENS_DATA_DIR"], os.environ["DAGSTER_HOME"] = str(data), str(home)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance, data
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _latest_metadata(instance, key: dg.AssetKey) -> dict | None:
    recs = (
        instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[PARTITION]), limit=1
        ).records
        or instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1).records
    )
    return dict(recs[0].asset_materialization.metadata) if recs else None


@pytest.mark.e2e
def test_every_table_asset_describes_its_columns(demo_instance):
    instance, _ = demo_instance
    tables = {}
    for key in instance.get_asset_keys():
        md = _latest_metadata(instance, key)
        if md and "dagster/column_schema" in md:
            tables[key.to_user_string()] = md["dagster/column_schema"].value.columns
    assert {"agg", "hits", "scores", "hero_table", "gate_summary", "comparisons", "calibration"} <= set(tables)
    undocumented = {t: [c.name for c in cols if not c.description] for t, cols in tables.items()}
    assert not {t: c for t, c in undocumented.items() if c}, undocumented


@pytest.mark.e2e
def test_bundle_site_is_a_link_and_big_integers_are_text(demo_instance):
    instance, _ = demo_instance
    for asset in ("release_bundle", "release_verdict"):
        site = _latest_metadata(instance, dg.AssetKey(asset))["site"]
        assert isinstance(site, dg.UrlMetadataValue) and site.value.startswith("file:///"), (asset, site)
        assert Path(site.value[len("file://") :]).is_file()
    assert isinstance(_latest_metadata(instance, dg.AssetKey("scores"))["seed"], dg.TextMetadataValue)
    # no integer the UI's JavaScript would round (a 64-bit seed is text), in any entry or JSON value
    big = []
    for key in instance.get_asset_keys():
        for name, v in (_latest_metadata(instance, key) or {}).items():
            raw = v.value if isinstance(v, dg.JsonMetadataValue) else getattr(v, "value", v)
            big += [(key.to_user_string(), name) for x in _ints(raw) if abs(x) >= 2**53]
    assert not big, big
    from definitions import defs

    assert "parquet" in defs.resolve_asset_graph().get(dg.AssetKey("hero_table")).kinds  # its staging file


def _ints(v) -> list[int]:
    if isinstance(v, bool):
        return []
    if isinstance(v, int):
        return [v]
    if type(v) is dict:
        return [x for y in v.values() for x in _ints(y)]
    if type(v) in (list, tuple):  # not a record (a TableSchema is a NamedTuple)
        return [x for y in v for x in _ints(y)]
    return []


def _evaluations(instance) -> list:
    from definitions import defs

    out = []
    for key in defs.resolve_asset_graph().asset_check_keys:
        for rec in instance.event_log_storage.get_asset_check_execution_history(key, limit=5):
            ev = rec.event.dagster_event.event_specific_data if rec.event and rec.event.dagster_event else None
            if ev is not None and getattr(ev, "passed", None) is not None:
                out.append((key, ev))
    return out


@pytest.mark.e2e
def test_every_check_evaluation_names_its_partition_and_never_passes_insufficient(demo_instance):
    instance, _ = demo_instance
    evals = _evaluations(instance)
    names = {k.name for k, _ in evals}
    assert any(n.startswith("dbt_") for n in names) and any(n.startswith("gate_") for n in names)
    for key, ev in evals:
        if not (key.name.startswith(("dbt_", "gate_")) or key.name == "published"):
            continue
        where = key.to_user_string()
        assert ev.partition == PARTITION, where
        assert ev.description and "\n" not in ev.description and PARTITION in ev.description, (where, ev.description)
        md = ev.metadata
        assert md["partition"].value == PARTITION, where
        if key.name.startswith("dbt_"):
            assert {"partition", "status", "subjects"} <= set(md), where
            assert ev.description.startswith(md["status"].value.replace("error", "FAILED")), (where, ev.description)
            if md["status"].value == "insufficient":
                assert not ev.passed and ev.severity == dg.AssetCheckSeverity.WARN, where
        if key.name.startswith("gate_") and "insufficient" in md:
            if md["insufficient"].value and not md["failed"].value:
                assert not ev.passed and ev.severity == dg.AssetCheckSeverity.WARN, where
                assert "insufficient" in ev.description, where
            if ev.passed:
                assert md["insufficient"].value == 0 and md["failed"].value == 0, where


@pytest.mark.e2e
def test_sensor_cursors_stay_small(demo_instance):
    from definitions import defs

    instance, _ = demo_instance
    repo = defs.get_repository_def()
    pager = defs.resources["pager"]
    for sensor in repo.sensor_defs:
        cursor = None
        for _ in range(2):
            with dg.build_sensor_context(
                instance=instance, cursor=cursor, definitions=defs, resources={"pager": pager}
            ) as ctx:
                out = sensor.evaluate_tick(ctx)
            cursor = out.cursor
        assert cursor is None or len(cursor) < 400, (sensor.name, len(cursor), cursor[:400])
        if cursor:
            json.loads(cursor)


@pytest.mark.e2e
def test_hero_table_shows_ci_whiskers(demo_instance):
    """Each system's headline metrics with their 95% CIs, as a PNG in hero_table's metadata."""
    instance, _ = demo_instance
    md = _latest_metadata(instance, dg.AssetKey("hero_table"))
    assert "ci_whiskers" in md, sorted(md)
    assert md["ci_whiskers"].value.startswith("![95% CI whiskers](data:image/png;base64,")
