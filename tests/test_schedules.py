"""schedules/: SPEC §13 schedules evaluated at the ticks Dagster's own cron iterator yields
(normal week, spring-forward and fall-back weekends), the sensors, freshness, serialisation
config, and the monitoring jobs end to end on a small simulated partition."""

import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import polars as pl
import pytest
from dagster._utils.schedules import cron_string_iterator

import lens_assets
import schedules
from lens_assets.common import weekly_partitions
from lens_core.common import calendar
from lens_core.common.hashing import atomic_write_json, sha256_file
from lens_core.monitor import monitoring as M
from schedules import jobs as J
from schedules import monitors as MON
from schedules.common import SERIAL_NIGHTLY, SERIAL_TAG, daily_partitions
from schedules.freshness import PUBLISHED_ASSETS, apply_freshness

ET = ZoneInfo("US/Eastern")
REPO = Path(__file__).resolve().parents[1]
try:
    import lvm_assets
except Exception:  # noqa: BLE001 - LVM group not importable: test the schedules against a stub
    lvm_assets = None


def et(*a):
    return datetime(*a, tzinfo=ET)


class FakePager:
    """The PagerResource interface (trigger/resolve -> bool); `up=False` models a dead webhook."""

    def __init__(self):
        self.events, self.up = [], True

    def trigger(self, dedup_key, summary, severity, source, component="", owners=(), details=None):
        if self.up:
            self.events.append(("trigger", dedup_key, severity))
        return self.up

    def resolve(self, dedup_key):
        if self.up:
            self.events.append(("resolve", dedup_key))
        return self.up


def _lvm_defs():
    if lvm_assets is not None:
        return lvm_assets.defs

    @dg.asset(group_name="lvm")
    def lvm_stub():
        return 1

    return dg.Definitions(assets=[lvm_stub])


@pytest.fixture(scope="module")
def repo():
    return dg.Definitions.merge(lens_assets.defs, _lvm_defs(), schedules.defs).get_repository_def()


def ticks(cron, start, end):
    out = []
    for t in cron_string_iterator(start.timestamp(), cron, "US/Eastern"):
        if t.timestamp() >= end.timestamp():
            return out
        out.append(t)


def _window(pdef, pk):
    w = pdef.time_window_for_partition_key(pk)
    return w.start.timestamp(), w.end.timestamp()


# ------------------------------------------------------------------------------------------- table
def test_every_spec_row_has_a_schedule_in_us_eastern(repo):
    names = {s.name for s in repo.schedule_defs}
    assert {r.schedule for r in J.SCHEDULE_TABLE} | {"hero_health_schedule"} <= names
    for r in J.SCHEDULE_TABLE:
        s = repo.get_schedule_def(r.schedule)
        assert (s.cron_schedule, s.execution_timezone, s.job_name) == (r.cron, "US/Eastern", r.job)
        repo.get_job(r.job)  # resolves
    hh = repo.get_schedule_def("hero_health_schedule")
    assert (hh.cron_schedule, hh.execution_timezone) == ("*/5 9-18 * * 1-5", "US/Eastern")
    assert {s.name for s in repo.sensor_defs} >= {"weekly_run_monitor", "emergency_tripwire"}
    assert repo.get_sensor_def("weekly_run_monitor").minimum_interval_seconds == 900
    assert repo.get_sensor_def("emergency_tripwire").minimum_interval_seconds == 60
    md = J.schedule_table_markdown()
    assert all(r.schedule in md and r.cron in md for r in J.SCHEDULE_TABLE)


_INSTANCE = []


def _evaluate(repo, row, tick):
    if not _INSTANCE:
        _INSTANCE.append(dg.DagsterInstance.ephemeral())
    ctx = dg.build_schedule_context(instance=_INSTANCE[0], scheduled_execution_time=tick, repository_def=repo)
    res = repo.get_schedule_def(row.schedule).evaluate_tick(ctx)
    assert res.run_requests and len(res.run_requests) == 1, res.skip_message
    return res.run_requests[0]


def _check_request(row, tick, rr):
    day = tick.astimezone(ET).date().isoformat()
    if row.kind == "daily":
        assert rr.partition_key == day and rr.run_key == f"{row.job}:{day}"
        lo, hi = _window(daily_partitions, day)
        assert lo <= tick.timestamp() < hi
        wk = rr.tags["lens/weekly_partition"]
        lo, hi = _window(weekly_partitions, wk)  # the weekly partition running at the tick
        assert lo <= tick.timestamp() < hi
    elif row.kind in ("weekly", "sunday"):
        assert rr.partition_key == day and rr.run_key == f"{row.job}:{day}"
        lo, _ = _window(weekly_partitions, day)
        assert lo <= tick.timestamp()
    else:
        assert rr.partition_key is None and rr.run_key == f"{row.job}:{day}"
    assert rr.tags[SERIAL_TAG] == row.serial and rr.tags["dagster/priority"] == str(row.priority)


# ------------------------------------------------------------------------------------------- a normal week
def test_normal_week(repo):
    start, end = et(2026, 11, 16), et(2026, 11, 23)  # Mon .. Sun inclusive
    expected = {"daily": 7, "weekly": 1, "sunday": 1}
    for row in J.SCHEDULE_TABLE:
        ts = ticks(row.cron, start, end)
        n = expected.get(row.kind, 7 if row.cron.endswith("* * *") else 1)
        assert len(ts) == n, (row.schedule, ts)
        keys = set()
        for t in ts:
            rr = J.run_request_for(row, t)
            _check_request(row, t, rr)
            keys.add(rr.run_key)
        assert len(keys) == len(ts)
        if row.kind == "daily":
            wk = [J.run_request_for(row, t).tags["lens/weekly_partition"] for t in ts]
            assert wk == ["2026-11-15"] * 6 + ["2026-11-22"]
    # through Dagster's own evaluation (partition validated against the job's partitions)
    for row in J.SCHEDULE_TABLE:
        t = ticks(row.cron, start, end)[-1]
        rr = _evaluate(repo, row, t)
        _check_request(row, t, rr)
        assert rr.run_key == J.run_request_for(row, t).run_key  # same tick, same key: idempotent


@pytest.mark.parametrize("sunday", [et(2027, 3, 14), et(2026, 3, 8)])
def test_spring_forward_slots_land_at_0300_and_serialise(repo, sunday):
    day = sunday.date().isoformat()
    at = {}
    for row in J.SCHEDULE_TABLE:
        ts = [
            t
            for t in ticks(row.cron, sunday - timedelta(days=1), sunday + timedelta(days=1))
            if t.date() == sunday.date()
        ]
        if row.kind == "lvm":
            assert ts == [] or row.cron == "0 7 * * *"
            continue
        assert len(ts) == 1, (row.schedule, ts)  # nothing skipped, nothing doubled
        at[row.schedule] = ts[0]
        _check_request(row, ts[0], _evaluate(repo, row, ts[0]))
    three = {s for s, t in at.items() if (t.hour, t.minute) == (3, 0)}
    # Measured from Dagster's iterator: 02:00, 02:15, 02:30, 02:45 and the weekly 02:00 all fire at 03:00 EDT
    assert three == {
        "weekly_lens_schedule",
        "hero_monitoring_schedule",
        "micro_suite_refresh_schedule",
        "parquet_regeneration_schedule",
        "ci_whiskers_schedule",
        "drift_pack_schedule",
    }
    assert all(at[s].utcoffset() == timedelta(hours=-4) for s in three)
    reqs = [J.run_request_for(J.ROWS[s], at[s]) for s in three]
    assert {r.tags[SERIAL_TAG] for r in reqs} == {SERIAL_NIGHTLY}
    order = [r.run_key.split(":")[0] for r in sorted(reqs, key=lambda r: -int(r.tags["dagster/priority"]))]
    assert order == [
        "weekly_lens_job",
        "hero_monitoring_job",
        "micro_suite_refresh_job",
        "parquet_regeneration_job",
        "ci_whiskers_job",
        "drift_pack_job",
    ]
    assert {r.partition_key for r in reqs} == {day}
    assert {r.tags["lens/weekly_partition"] for r in reqs} == {day}


@pytest.mark.parametrize("sunday", [et(2026, 11, 1), et(2027, 11, 7)])
def test_fall_back_slots_run_once(repo, sunday):
    for row in J.SCHEDULE_TABLE:
        ts = [
            t
            for t in ticks(row.cron, sunday - timedelta(days=1), sunday + timedelta(days=1))
            if t.date() == sunday.date()
        ]
        if row.kind == "lvm" and row.cron == "0 6 * * 1":
            assert ts == []
            continue
        assert len(ts) == 1, (row.schedule, ts)  # 01:xx repeats, 02:00+ does not
        assert ts[0].utcoffset() == timedelta(hours=-5)
        assert (ts[0].hour, ts[0].minute) == tuple(int(x) for x in row.cron.split()[1::-1])
        _check_request(row, ts[0], _evaluate(repo, row, ts[0]))
    hh = ticks("*/5 9-18 * * 1-5", sunday, sunday + timedelta(days=2))
    assert hh[0] == et(sunday.year, sunday.month, sunday.day + 1, 9, 0) and len(hh) == 120


def test_weekly_partition_agrees_with_dagster_windows():
    t = et(2026, 1, 4, 2, 0)
    while t < et(2027, 12, 31):
        pk = calendar.weekly_partition_for(t)
        lo, hi = _window(weekly_partitions, pk)
        assert lo <= t.timestamp() < hi, (t, pk)
        t = datetime.fromtimestamp(t.timestamp() + 5 * 3600 + 17 * 60, ET)


def test_weekly_run_data_source_and_grids(monkeypatch):
    row = J.ROWS["weekly_lens_schedule"]
    monkeypatch.setenv("DATA_SOURCE", "prod")
    rr = J.run_request_for(row, et(2026, 11, 22, 2))
    assert rr.tags["lens/data_source"] == "prod" and rr.tags["lens/env"] == "prod"
    assert rr.tags["lens/full_grids"] == "1"
    assert rr.run_config == {"resources": {"lens_source": {"config": {"source": "prod"}}}}
    monkeypatch.delenv("DATA_SOURCE")
    rr = J.run_request_for(row, et(2026, 11, 22, 2))
    assert rr.tags["lens/data_source"] == "sim"
    monkeypatch.setenv("DATA_SOURCE", "bogus")
    with pytest.raises(ValueError, match="DATA_SOURCE"):
        J.run_request_for(row, et(2026, 11, 22, 2))


def test_run_config_of_the_weekly_run_is_valid(repo):
    rr = J.run_request_for(J.ROWS["weekly_lens_schedule"], et(2026, 11, 22, 2))
    assert dg.validate_run_config(repo.get_job("weekly_lens_job"), rr.run_config)


# ------------------------------------------------------------------------------------------- config
def test_dagster_yaml_example_serialises_nightly(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "schedules" / "dagster.yaml.example").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as inst:
        assert type(inst.run_coordinator).__name__ == "QueuedRunCoordinator"
        conf = inst.get_concurrency_config()
    tag_limits = conf.run_queue_config.tag_concurrency_limits
    limits = {(d["key"], d.get("value")): d["limit"] for d in tag_limits}
    assert limits[(SERIAL_TAG, SERIAL_NIGHTLY)] == 1 and limits[(SERIAL_TAG, "lvm")] == 1
    assert conf.pool_config.default_pool_limit == 1

    # The spring-forward 03:00 pile-up through Dagster's own queue logic: priority sort, then
    # tag limits. Submitted in any order, one runs at a time, weekly first, then nominal order.
    from types import SimpleNamespace

    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
    from dagster._utils.tags import TagConcurrencyLimitsCounter

    tick = et(2027, 3, 14, 3, 0)
    rows = [
        J.ROWS[s]
        for s in (
            "drift_pack_schedule",
            "ci_whiskers_schedule",
            "hero_monitoring_schedule",
            "weekly_lens_schedule",
            "parquet_regeneration_schedule",
            "micro_suite_refresh_schedule",
        )
    ]
    queue = [SimpleNamespace(name=r.job, tags=J.run_request_for(r, tick).tags) for r in rows]
    launched = []
    while queue:
        counter = TagConcurrencyLimitsCounter(tag_limits, [])
        batch = []
        for run in QueuedRunCoordinatorDaemon._priority_sort(None, queue):
            if not counter.is_blocked(run):
                counter.update_counters_with_launched_item(run)
                batch.append(run)
        assert len(batch) == 1  # serialised: one nightly run at a time
        launched.append(batch[0].name)
        queue.remove(batch[0])  # it finishes; the next dequeue pass
    assert launched == [
        "weekly_lens_job",
        "hero_monitoring_job",
        "micro_suite_refresh_job",
        "parquet_regeneration_job",
        "ci_whiskers_job",
        "drift_pack_job",
    ]


def test_jobs_carry_serial_tags_and_lvm_selection(repo):
    for r in J.SCHEDULE_TABLE:
        if r.job != "weekly_lens_job":
            assert repo.get_job(r.job).tags[SERIAL_TAG] == r.serial
    nodes = set(repo.get_job("lvm_drift_check_job").graph.node_names())
    if lvm_assets is not None:
        assert nodes and all("check" in n or "leakage" in n for n in nodes)
        lane = set(repo.get_job("lvm_lane_health_job").graph.node_names())
        assert any("checks" in n for n in lane) and not any("checkpoints" in n for n in lane)
    # without the LVM group the jobs resolve to nothing rather than breaking the code location
    alone = dg.Definitions.merge(lens_assets.defs, schedules.defs)
    assert alone.resolve_job_def("lvm_lane_health_job").graph.node_names() == []


def test_root_definitions_include_schedules():
    import definitions

    r = definitions.defs.get_repository_def()
    assert "weekly_lens_schedule" in {s.name for s in r.schedule_defs}


def test_freshness_on_published_assets(repo):
    d = apply_freshness(dg.Definitions.merge(lens_assets.defs, schedules.defs))
    g = d.get_repository_def().asset_graph
    for k in PUBLISHED_ASSETS:
        p = g.get(dg.AssetKey(k)).freshness_policy
        assert isinstance(p, dg.FreshnessPolicy) and p.deadline_cron == "0 9 * * 0" and p.timezone == "US/Eastern"
    assert g.get(dg.AssetKey("agg")).freshness_policy is None
    mapped = apply_freshness([*lens_assets.assets.lens_assets, lens_assets.release.release_bundle])
    pols = {s.key.to_user_string(): s.freshness_policy for a in mapped for s in a.specs}
    assert pols["release_bundle"] is not None and pols["pool"] is None


# ------------------------------------------------------------------------------------------- sensors
STATE = {"pass": False}


@dg.asset(group_name="stubgrp", owners=["team:stub"], check_specs=[dg.AssetCheckSpec("must_pass", asset="stub_asset")])
def stub_asset():
    return dg.MaterializeResult(
        check_results=[
            dg.AssetCheckResult(check_name="must_pass", passed=STATE["pass"], severity=dg.AssetCheckSeverity.ERROR)
        ]
    )


def test_weekly_run_monitor_pages_a_missed_week_once_and_leaves_checks_to_the_paging_sensor(monkeypatch):
    """One owner per concern (issue 23): a red ERROR check is page_on_failed_checks' page (this
    sensor only counts it in its tick line); a missed weekly run is this sensor's, paged once while
    missed and resolved when release_bundle lands."""

    @dg.asset(name="release_bundle")
    def stub_release():
        return None

    defs = dg.Definitions(
        assets=[stub_asset, stub_release], sensors=[MON.weekly_run_monitor], resources={"pager": FakePager()}
    )
    pager = FakePager()
    latest = {"partition": "9999-12-31"}
    monkeypatch.setattr(MON, "_latest_release_partition", lambda instance: latest["partition"])
    with dg.DagsterInstance.ephemeral() as inst:

        def tick(cursor):
            ctx = dg.build_sensor_context(instance=inst, cursor=cursor, definitions=defs, resources={"pager": pager})
            res = MON.weekly_run_monitor.evaluate_tick(ctx)
            assert not res.run_requests and "weekly run monitor" in res.skip_message
            assert len(res.cursor) < 200  # compact: the open dedup keys only
            return res.cursor, res.skip_message

        c, _ = tick(None)
        STATE["pass"] = False
        dg.materialize([stub_asset], instance=inst, raise_on_error=False)
        c, msg = tick(c)
        assert pager.events == [] and "stubgrp: 1" in msg  # the check's page is not this sensor's
        latest["partition"] = None  # no weekly run stored: missed
        c, _ = tick(c)
        assert len(pager.events) == 1 and pager.events[0][0] == "trigger"
        key = pager.events[0][1]
        assert key.startswith("lens/gate_monitor/weekly_run/")
        c, _ = tick(c)
        assert len(pager.events) == 1  # still missed: no second page
        latest["partition"] = "9999-12-31"
        pager.up = False
        c, _ = tick(c)  # webhook down: stays open, retried
        assert json.loads(c)["open"] == [key]
        pager.up = True
        c, _ = tick(c)
        assert pager.events[-1] == ("resolve", key) and json.loads(c)["open"] == []


def _bundle(root: Path, tail=1.5, age_days=0.0, now: datetime | None = None):
    """A published bundle created `age_days` before `now` (default: the wall clock; a test that
    ticks at a fixed time passes that time, so the bundle's age does not drift with the date)."""
    fp = "v22_cafef00d_1"
    b = root / "bundles" / fp
    (b / "tables").mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {
            "system": ["a"],
            "slice": ["all"],
            "metric": ["file_credit"],
            "mean": [0.01],
            "ci_low": [0.0],
            "ci_high": [0.02],
            "n": [3],
        }
    ).write_parquet(b / "scores.parquet")
    pl.DataFrame({"system": ["a"] * 3, "qid": list("xyz"), "ndcg_10": [0.1, 0.5, 0.9]}).write_parquet(
        b / "per_query.parquet"
    )
    pl.DataFrame(
        {
            "system": ["a"],
            "ndcg_10": [0.5],
            "sla_recall_50": [0.6],
            "lat_p95": [40.0],
            "lat_p99": [60.0],
            "p99_p95": [tail],
            "file_credit": [0.01],
        }
    ).write_csv(b / "tables" / "hero_span_v22.csv")
    ms = int(((now or datetime.now(ET)) - timedelta(days=age_days)).timestamp() * 1000)
    atomic_write_json(
        b / "attestation.json",
        {
            "fingerprint": fp,
            "created_ms": ms,
            "all_blocking_green": True,
            "gates": [],
            "artifacts": {
                "scores.parquet": sha256_file(b / "scores.parquet"),
                "tables/hero_span_v22.csv": sha256_file(b / "tables" / "hero_span_v22.csv"),
            },
        },
    )
    atomic_write_json(root / "published.json", {"fingerprint": fp, "bundle": f"bundles/{fp}", "published_ms": ms})
    return b


def test_emergency_tripwire_sensor(data_dir):
    pager = FakePager()
    b = _bundle(data_dir)

    def tick(cursor):
        ctx = dg.build_sensor_context(cursor=cursor, resources={"pager": pager})
        res = MON.emergency_tripwire.evaluate_tick(ctx)
        return res.cursor, res

    c, res = tick(None)
    assert pager.events == [] and "deep" in res.skip_message
    c, res = tick(c)
    assert "cached" in res.skip_message  # nothing moved: no re-hash
    csv = b / "tables" / "hero_span_v22.csv"
    good = csv.read_bytes()
    csv.write_bytes(good.replace(b"0.5", b"0.9"))  # tampered published table
    c, res = tick(c)
    key = "lens/emergency/v22_cafef00d_1/tampered/hero_table"
    assert pager.events == [("trigger", key, "critical")]
    c, res = tick(c)  # cached deep problem keeps the incident open
    assert len(pager.events) == 1 and "cached" in res.skip_message
    csv.write_bytes(good)
    os.utime(csv, ns=(1, 1))  # a different signature: deep re-check
    c, res = tick(c)
    assert pager.events[-1] == ("resolve", key)


def test_hero_health_schedule(data_dir):
    pager = FakePager()
    tick_time = et(2026, 11, 24, 10, 5)
    _bundle(data_dir, tail=2.6, age_days=9, now=tick_time)
    sched = MON.hero_health_schedule
    for _ in range(2):
        ctx = dg.build_schedule_context(scheduled_execution_time=tick_time, resources={"pager": pager})
        res = sched.evaluate_tick(ctx)
        assert not res.run_requests and "problem" in res.skip_message
    assert sorted(e[1] for e in pager.events) == ["lens/hero_health/a/tail", "lens/hero_health/stale"]
    state = json.loads(MON.hero_health_state_path().read_text())
    assert len(state["open"]) == 2


# ------------------------------------------------------------------------------------------- jobs, end to end
@pytest.fixture(scope="module")
def partition(tmp_path_factory):
    """One small simulated weekly partition (2026-11-15, 20 queries per suite) under its own
    LENS_DATA_DIR: the part of the weekly chain the monitoring jobs read (query suites, raw runs,
    agg/hits, pool, qrels, per-query, scores, hero table), materialised exactly as
    `lens_assets.run.run_weekly` does (same job assets, resources and IO manager) minus the
    gates/calibration/bundle steps the monitors do not read, to keep the test fast."""
    from resources.data_source import LensDataSource

    root = tmp_path_factory.mktemp("sched_data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LENS_DATA_DIR", str(root))
        mp.delenv("DAGSTER_HOME", raising=False)
        mp.delenv("DATA_SOURCE", raising=False)
        d = lens_assets.defs
        sel = (
            dg.AssetSelection.assets(
                "hero_table", "per_query", "qrels", "pool", "raw_runs", "agg", "hits", "scores", "query_suites"
            )
            .upstream()
            .required_multi_asset_neighbors()
        )
        resources = dict(d.resources)
        resources["lens_source"] = LensDataSource(queries_per_suite=20)
        res = dg.materialize(
            list(d.assets),
            selection=sel,
            partition_key="2026-11-15",
            resources=resources,
            instance=dg.DagsterInstance.ephemeral(),
        )
        assert res.success and (root / "staging" / "agg" / "2026-11-15.parquet").is_file()
        yield root


def _materialize(assets, pk, tags=None):
    res = dg.materialize(
        assets, partition_key=pk, instance=dg.DagsterInstance.ephemeral(), tags=tags, raise_on_error=False
    )
    assert res.success, [e.event_specific_data.error.message for e in res.all_events if e.is_step_failure]
    checks = {c.check_name: c.passed for c in res.get_asset_check_evaluations()}
    mats = {
        m.asset_key.to_user_string(): m.metadata
        for m in [e.materialization for e in res.get_asset_materialization_events()]
    }
    return checks, mats


def test_regeneration_is_byte_identical(partition, monkeypatch):
    from schedules.assets import parquet_regeneration

    monkeypatch.setenv("LENS_DATA_DIR", str(partition))
    checks, mats = _materialize([parquet_regeneration], "2026-11-17")
    assert checks == {"regeneration_identical": True}
    out = partition / "monitoring" / "parquet_regeneration" / "2026-11-17"
    for t in ("agg", "hits"):
        stored = partition / "staging" / t / "2026-11-15.parquet"
        assert sha256_file(out / f"{t}.parquet") == sha256_file(stored)
        assert (out / f"{t}.parquet").read_bytes() == stored.read_bytes()
    assert mats["parquet_regeneration"]["weekly_partition"].value == "2026-11-15"


def test_daily_jobs_on_the_partition(partition, monkeypatch):
    from schedules.assets import ci_whiskers, hero_monitor, micro_suites

    monkeypatch.setenv("LENS_DATA_DIR", str(partition))
    checks, mats = _materialize([hero_monitor, micro_suites, ci_whiskers], "2026-11-17")
    assert checks["micro_suite_size"] is False  # 20 per suite < 800: all taken, reported
    mon = partition / "monitoring"
    s1 = json.loads((mon / "micro_suite_refresh" / "2026-11-17" / "summary.json").read_text())
    assert all(s["took_all"] and "all taken" in s["note"] for s in s1["suites"])
    sha1 = s1["sha256"]
    _materialize([micro_suites], "2026-11-17")  # same date: same bytes
    assert json.loads((mon / "micro_suite_refresh" / "2026-11-17" / "summary.json").read_text())["sha256"] == sha1
    png = mon / "ci_whiskers" / "2026-11-17" / "ci_whiskers.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    hero = json.loads((mon / "hero_monitoring" / "2026-11-17" / "summary.json").read_text())
    assert hero["weekly_partition"] == "2026-11-15" and hero["heroes"]
    # Monday after a missed Sunday: falls back to the newest stored week and says so
    _, mats = _materialize([ci_whiskers], "2026-11-22")
    assert mats["ci_whiskers"]["fallback"].value is True
    assert mats["ci_whiskers"]["weekly_partition"].value == "2026-11-15"


def test_sunday_jobs_on_the_partition(partition, monkeypatch):
    from schedules.assets import calibrator_parity, drift_pack, pool_audit, tripwires

    monkeypatch.setenv("LENS_DATA_DIR", str(partition))
    checks, mats = _materialize([drift_pack, calibrator_parity, pool_audit, tripwires], "2026-11-15")
    assert checks["calibrator_parity"] is True
    assert "calibration_drift" in checks and "tripwires" in checks
    d = partition / "monitoring" / "drift_pack" / "2026-11-15"
    for m in M.DRIFT_METRICS:
        assert (d / f"trend_{m}.png").is_file()
    summary = json.loads((d / "summary.json").read_text())
    assert {s["system"] for s in summary["systems"]} >= {"all"}
    assert "no stored pool for the previous week 2026-11-08" in mats["pool_audit"]["note"].value
    # a previous week whose pool is the first half of this week's: only additions
    pool = pl.read_parquet(partition / "staging" / "pool" / "2026-11-15.parquet")
    pool.head(pool.height // 2).write_parquet(partition / "staging" / "pool" / "2026-11-08.parquet")
    _, mats = _materialize([pool_audit], "2026-11-15")
    assert (
        mats["pool_audit"]["removed"].value == 0 and mats["pool_audit"]["added"].value == pool.height - pool.height // 2
    )
    assert 0.45 < mats["pool_audit"]["jaccard"].value < 0.55
    diff = pl.read_parquet(partition / "monitoring" / "pool_audit" / "2026-11-15" / "pool_diff.parquet")
    assert "all" in diff["system"].to_list() and diff.height > 1
    with pytest.raises(Exception, match="run weekly_lens_job"):
        dg.materialize([tripwires], partition_key="2026-11-08", instance=dg.DagsterInstance.ephemeral())


def test_readme_table_is_the_code_table():
    readme = (REPO / "schedules" / "README.md").read_text()
    assert J.schedule_table_markdown() in readme


def test_page_functions_speak_the_real_pager_interface(monkeypatch):
    paging = pytest.importorskip("resources.paging")
    from schedules.common import page_functions

    calls = []
    monkeypatch.setattr(paging.PagerResource, "send", lambda self, event: calls.append(event) or True)
    trigger, resolve = page_functions(paging.PagerResource(), "lens/test")
    p = M.Problem("lens/x", "red", "critical", "scores", ("team:a",), {"n": 1})
    assert trigger(p) and resolve("lens/x")
    assert [c["event_action"] for c in calls] == ["trigger", "resolve"]
    assert calls[0]["dedup_key"] == "lens/x" and calls[0]["payload"]["severity"] == "critical"
