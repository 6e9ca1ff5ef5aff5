"""Paging: the Events v2 webhook resource and the check-failure sensor (SPEC §13).

The sensor tests drive real asset-check evaluations on one temporary sqlite instance (the
default storage's code path) and page a local HTTP receiver (tests/fake_pager.py).
"""

from __future__ import annotations

import json
import logging

import dagster as dg
import pytest

from lens_assets.paging_sensor import (
    OPEN,
    RESOLVE_PENDING,
    TRIGGER_PENDING,
    build_paging_sensor,
    dedup_key_for,
    page_on_failed_checks,
)
from resources.paging import PagerResource, pd_severity
from tests.fake_pager import FakePager, time_it

SECRET = "R0UT1NG-SECRET-abc123"


# ---------------------------------------------------------------------------------------------
# Resource
# ---------------------------------------------------------------------------------------------
def test_severity_mapping():
    assert [pd_severity(p) for p in ("P0", "p1", "P2", "P3", "P4")] == ["critical", "error", "warning", "info", "info"]
    assert (
        pd_severity("CRITICAL") == "critical" and pd_severity("WARN") == "warning" and pd_severity("ERROR") == "error"
    )
    with pytest.raises(ValueError, match="severity"):
        pd_severity("sev-unknown")


def test_trigger_payload_is_events_v2():
    p = PagerResource(url="http://127.0.0.1:9/x", routing_key=SECRET)
    ev = p.trigger_payload(
        "lens:scores:pool_gate",
        "pool gate failed",
        "P0",
        component="scores",
        owners=["team:search-eval", "a@b.c"],
        details={"value": 0.8, "threshold": 0.9},
        group="lens",
        klass="pool_gate",
    )
    assert set(ev) == {"routing_key", "event_action", "dedup_key", "payload"}
    assert ev["event_action"] == "trigger" and ev["routing_key"] == SECRET
    assert ev["dedup_key"] == "lens:scores:pool_gate"
    pl = ev["payload"]
    assert set(pl) == {"summary", "source", "severity", "component", "group", "class", "custom_details"}
    assert pl["severity"] == "critical" and pl["source"] == "lens-pipeline" and pl["class"] == "pool_gate"
    assert pl["custom_details"] == {"owners": ["team:search-eval", "a@b.c"], "value": 0.8, "threshold": 0.9}
    assert p.resolve_payload("k") == {"routing_key": SECRET, "event_action": "resolve", "dedup_key": "k"}
    nan = p.trigger_payload("k", "s", "P1", details={"value": float("nan"), "obj": object, "t": (1, float("inf"))})
    body = json.dumps(nan, allow_nan=False)  # strict JSON even for a non-finite gate value
    assert json.loads(body)["payload"]["custom_details"]["value"] == "nan"
    long = p.trigger_payload("k", "x" * 5000, "info")
    assert len(long["payload"]["summary"]) == 1024


def test_env_fallback_and_secret_not_in_repr(monkeypatch):
    monkeypatch.setenv("PAGER_URL", "http://127.0.0.1:9/hook")
    monkeypatch.setenv("PAGER_ROUTING_KEY", SECRET)
    p = PagerResource()
    assert p.resolved_url() == "http://127.0.0.1:9/hook" and p.enabled()
    assert p.resolve_payload("k")["routing_key"] == SECRET
    explicit = PagerResource(routing_key=SECRET)
    for text in (repr(explicit), str(explicit), json.dumps(p.describe()), json.dumps(explicit.describe())):
        assert SECRET not in text
    assert p.describe()["routing_key_set"] is True


def test_send_delivers_json_to_receiver():
    with FakePager() as fake:
        p = PagerResource(url=fake.url, routing_key=SECRET)
        assert p.trigger("lens:a:b", "boom", "P1", owners=["team:x"]) is True
        assert p.resolve("lens:a:b") is True
        assert [e["event_action"] for e in fake.events()] == ["trigger", "resolve"]
        assert fake.events()[0]["payload"]["severity"] == "error"
        assert fake.headers[0]["Content-Type"] == "application/json"


@pytest.mark.parametrize("mode", ["fail", "hang", "down"])
def test_webhook_down_slow_or_500_returns_false_never_raises(mode, caplog):
    fake = FakePager(mode="fail" if mode == "fail" else "hang", hang_s=2.0)
    url = fake.url + "?token=" + "URLSECRET"
    if mode == "down":
        fake.stop()
    p = PagerResource(url=url, routing_key=SECRET, timeout_s=0.3)
    with caplog.at_level(logging.DEBUG, logger="resources.paging"):
        ok, took = time_it(p.trigger, "lens:a:b", "boom", "P0")
    fake.stop() if mode != "down" else None
    assert ok is False
    assert took < 1.5  # bounded by timeout_s, not by the receiver
    assert caplog.records, "a failed delivery is logged"
    for rec in caplog.records:
        assert SECRET not in rec.getMessage() and "URLSECRET" not in rec.getMessage()
    if mode != "down":
        assert fake.received and fake.received[0]["routing_key"] == SECRET  # it did go out
        assert fake.accepted == []


def test_bad_scheme_and_disabled(caplog, monkeypatch):
    monkeypatch.delenv("PAGER_URL", raising=False)
    with caplog.at_level(logging.INFO, logger="resources.paging"):
        assert PagerResource(url="ftp://h/x", routing_key=SECRET).trigger("k", "s", "P2") is False
        assert PagerResource(routing_key=SECRET).trigger("k", "would page", "P2") is True  # disabled: logged
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "would send" in text and "would page" in text and SECRET not in text


# ---------------------------------------------------------------------------------------------
# Sensor
# ---------------------------------------------------------------------------------------------
GATE = {"pass": False, "raise": False}


@dg.asset(owners=["team:search-eval", "oncall@example.com"], group_name="lens")
def tiny_scores() -> int:
    return 1


@dg.asset_check(
    asset=tiny_scores, blocking=True, description="judged@10 >= 0.9", metadata={"owner": "team:ml-calibration"}
)
def tiny_pool_gate() -> dg.AssetCheckResult:
    if GATE["raise"]:
        raise RuntimeError("gate input missing")
    return dg.AssetCheckResult(
        passed=GATE["pass"],
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"value": 0.8 if not GATE["pass"] else 0.95, "threshold": 0.9},
    )


@dg.asset_check(asset=tiny_scores)
def tiny_warn_gate() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN)


DEDUP = dedup_key_for(dg.AssetCheckKey(dg.AssetKey("tiny_scores"), "tiny_pool_gate"))


def _defs(url: str) -> dg.Definitions:
    return dg.Definitions(
        assets=[tiny_scores],
        asset_checks=[tiny_pool_gate, tiny_warn_gate],
        sensors=[page_on_failed_checks],
        resources={"pager": PagerResource(url=url, routing_key=SECRET, timeout_s=0.3)},
    )


def _pager(defs: dg.Definitions) -> PagerResource:
    return defs.resources["pager"]


def _run(instance, passed: bool, crash: bool = False) -> None:
    GATE["pass"], GATE["raise"] = passed, crash
    dg.materialize([tiny_scores, tiny_pool_gate, tiny_warn_gate], instance=instance, raise_on_error=False)


def _tick(instance, defs, cursor):
    # direct invocation takes the sensor's resources explicitly (the daemon binds the repo's)
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources={"pager": _pager(defs)})
    res = page_on_failed_checks(ctx)
    assert isinstance(res, dg.SkipReason)
    assert SECRET not in (ctx.cursor or "") and SECRET not in (res.skip_message or "")
    return ctx.cursor, res.skip_message


@pytest.fixture(scope="module")
def instance():
    """One sqlite instance (the default storage's code path) for every sensor test: each test
    starts its sensor without a cursor, so the seeded cursor hides the other tests' history."""
    with dg.instance_for_test() as inst:
        yield inst


def test_sensor_pages_once_per_failure_and_resolves(instance):
    with FakePager() as fake:
        defs = _defs(fake.url)
        cur, msg = _tick(instance, defs, None)  # first start, nothing yet
        assert "first start" in msg and fake.received == []
        _run(instance, passed=False)
        cur, msg = _tick(instance, defs, cur)
        triggers = fake.events("trigger")
        assert len(triggers) == 1, msg  # the failing ERROR gate pages; the WARN check does not
        ev = triggers[0]
        assert ev["dedup_key"] == DEDUP == "lens:tiny_scores:tiny_pool_gate"
        assert ev["payload"]["severity"] == "critical"  # blocking ERROR -> P0
        assert ev["payload"]["custom_details"]["owners"] == [
            "team:search-eval",
            "oncall@example.com",
            "team:ml-calibration",
        ]
        assert ev["payload"]["custom_details"]["metadata"] == {"value": 0.8, "threshold": 0.9}
        assert ev["payload"]["component"] == "tiny_scores" and ev["payload"]["group"] == "lens"
        assert json.loads(cur)["incidents"][DEDUP]["state"] == OPEN

        cur, _ = _tick(instance, defs, cur)  # no new evaluation: nothing
        _run(instance, passed=False)  # rerun, gate still failing: no page
        cur, _ = _tick(instance, defs, cur)
        assert len(fake.events("trigger")) == 1 and fake.events("resolve") == []

        _run(instance, passed=True)  # passes again: one resolve
        cur, _ = _tick(instance, defs, cur)
        assert [e["dedup_key"] for e in fake.events("resolve")] == [DEDUP]
        assert json.loads(cur)["incidents"] == {}
        cur, _ = _tick(instance, defs, cur)
        assert len(fake.received) == 2

        _run(instance, passed=False)  # a new failure is a new page
        cur, _ = _tick(instance, defs, cur)
        assert len(fake.events("trigger")) == 2


def test_first_start_does_not_page_history(instance):
    with FakePager() as fake:
        defs = _defs(fake.url)
        _run(instance, passed=False)
        cur, msg = _tick(instance, defs, None)
        assert "seeded" in msg
        cur, _ = _tick(instance, defs, cur)
        assert fake.received == []
        _run(instance, passed=True)  # not our incident: nothing to resolve
        cur, _ = _tick(instance, defs, cur)
        assert fake.received == []
        _run(instance, passed=False)
        cur, _ = _tick(instance, defs, cur)
        assert len(fake.events("trigger")) == 1
        # a corrupt cursor reseeds rather than paging history
        cur2, msg = _tick(instance, defs, "{not json")
        assert "unreadable" in msg and len(fake.received) == 1


def test_receiver_down_then_up_pages_exactly_once(instance):
    fake = FakePager(mode="fail")
    defs = _defs(fake.url)
    try:
        cur, _ = _tick(instance, defs, None)
        _run(instance, passed=False)
        cur, msg = _tick(instance, defs, cur)  # 500: no crash, pending
        assert json.loads(cur)["incidents"][DEDUP]["state"] == TRIGGER_PENDING
        assert "pending 1" in msg and fake.accepted == []
        fake.stop()  # now down altogether
        cur, _ = _tick(instance, defs, cur)
        assert json.loads(cur)["incidents"][DEDUP]["attempts"] == 2
        _run(instance, passed=False)  # still failing while down: still one pending page
        cur, _ = _tick(instance, defs, cur)
    finally:
        fake.stop()
    with FakePager() as up:  # the webhook comes back (same sensor, new URL = same resource key)
        defs_up = _defs(up.url)
        cur, _ = _tick(instance, defs_up, cur)
        cur, _ = _tick(instance, defs_up, cur)
        assert len(up.events("trigger")) == 1 and up.events()[0]["dedup_key"] == DEDUP
        assert json.loads(cur)["incidents"][DEDUP]["state"] == OPEN


def test_slow_receiver_retried_same_dedup_key_and_resolve_retry(instance):
    fake = FakePager(mode="hang", hang_s=1.0)
    try:
        defs = _defs(fake.url)
        cur, _ = _tick(instance, defs, None)
        _run(instance, passed=False)
        cur, _ = _tick(instance, defs, cur)  # times out (0.3 s): pending
        assert json.loads(cur)["incidents"][DEDUP]["state"] == TRIGGER_PENDING
        fake.mode = "ok"
        cur, _ = _tick(instance, defs, cur)
        cur, _ = _tick(instance, defs, cur)
        assert len(fake.events("trigger", accepted=True)) == 1
        # at-least-once: every delivery attempt carried the same dedup key
        assert {e["dedup_key"] for e in fake.received} == {DEDUP}
        fake.mode = "fail"
        _run(instance, passed=True)
        cur, _ = _tick(instance, defs, cur)
        assert json.loads(cur)["incidents"][DEDUP]["state"] == RESOLVE_PENDING
        fake.mode = "ok"
        cur, _ = _tick(instance, defs, cur)
        assert len(fake.events("resolve")) == 1 and json.loads(cur)["incidents"] == {}
    finally:
        fake.stop()


def test_pass_while_trigger_pending_sends_nothing(instance):
    with FakePager(mode="fail") as fake:
        defs = _defs(fake.url)
        cur, _ = _tick(instance, defs, None)
        _run(instance, passed=False)
        cur, _ = _tick(instance, defs, cur)
        _run(instance, passed=True)  # recovered before the page ever got through
        fake.mode = "ok"
        cur, _ = _tick(instance, defs, cur)
        assert fake.accepted == [] and json.loads(cur)["incidents"] == {}


def test_crashed_blocking_check_pages_as_failure(instance):
    with FakePager() as fake:
        defs = _defs(fake.url)
        cur, _ = _tick(instance, defs, None)
        _run(instance, passed=False, crash=True)
        cur, _ = _tick(instance, defs, cur)
        trig = fake.events("trigger")
        assert len(trig) == 1 and "did not complete" in trig[0]["payload"]["summary"]


def test_sensor_definition_shape():
    s = build_paging_sensor(pager_key="my_pager", name="p2")
    assert s.name == "p2" and "my_pager" in s.required_resource_keys
    assert page_on_failed_checks.minimum_interval_seconds == 60
    assert page_on_failed_checks.default_status == dg.DefaultSensorStatus.RUNNING
    from lens_assets import paging_sensor

    assert paging_sensor.sensors == [page_on_failed_checks]
    assert "pager" in paging_sensor.defs.resources


def test_daemon_path_evaluate_tick(instance):
    """The path the sensor daemon takes: `evaluate_tick` returns the cursor in its result."""
    with FakePager() as fake:
        defs = _defs(fake.url)
        sensor = defs.get_repository_def().get_sensor_def("page_on_failed_checks")

        def tick(cursor):
            with dg.build_sensor_context(
                instance=instance, cursor=cursor, definitions=defs, resources={"pager": _pager(defs)}
            ) as ctx:
                out = sensor.evaluate_tick(ctx)
            assert out.run_requests == [] and SECRET not in (out.cursor or "")
            return out.cursor

        cur = tick(None)
        _run(instance, passed=False)
        cur = tick(cur)
        cur = tick(cur)
        assert [e["dedup_key"] for e in fake.events("trigger")] == [DEDUP]
