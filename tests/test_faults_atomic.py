"""Issue 18, items 4-5: verify cannot be fooled (tamper cases), atomic sets and monotonic
publication (kill -9 at points, then the next run cleans up and the state is consistent).

Each case lands in TALLY as (case, outcome): `caught` (a tamper verify reported), `survived`
(a kill -9 after which the state was consistent and the next run cleaned up), `refused` (an
older partition or a bad path refused) or `leak` (the case went through: the test fails). The
session's one-line fault tally (tests/conftest.py) adds them up with the other fault suites.

A kill -9 "at a point" is a child process that runs the real code with one OS call patched to
SIGKILL itself right there (`_killer`): deterministic, unlike a timed kill.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from lens_cli.main import build_parser, main
from lens_core.collect.rawruns import write_raw_run
from lens_core.common.hashing import COMPLETE_MARKER, content_hash, sha256_file
from lens_core.common.settings import load_config
from lens_core.common.systems import baseline
from lens_core.decide.gates import GateResult
from lens_core.publish.bundle import (
    PartitionBusy,
    acquire_partition_lease,
    assemble,
    attested_facts,
    lease_owner,
    partition_lock,
    publish_pointer,
    read_partition_lease,
    read_published,
    release_partition_lease,
    verify,
)
from lens_core.publish.site import publish_site
from lens_core.sim.simulator import Simulator
from tests.conftest import REPO, own_dirs

TALLY: list[tuple[str, str]] = []
PARTITION = "2026-11-08"


def _tally(case: str, ok: bool, outcome: str) -> None:
    TALLY.append((case, outcome if ok else "leak"))


# ----------------------------------------------------------------------------------------------
# one real bundle from the simulator chain (published or not: verify does not care)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults_data")
    stale = d / "staging" / "calibration_files" / PARTITION / "reliability_gone_system.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier run's plot")  # must not reach this run's bundle
    with own_dirs(d, tmp_path_factory.mktemp("faults_home")):
        from lens_assets.run import run_weekly

        res = run_weekly(PARTITION, queries_per_suite=30, progress=False)
    assert res["bundle"], res.get("errors")
    return d, Path(res["bundle"])


def _copy(chain, tmp_path) -> Path:
    d, b = chain
    dst = tmp_path / "data"
    shutil.copytree(d, dst, symlinks=True)
    return dst / "bundles" / b.name


def _att(b: Path) -> dict:
    return json.loads((b / "attestation.json").read_text())


def _reattest(b: Path, att: dict) -> Path:
    """What a forger with write access does: re-hash every artifact, recompute the content hash
    and the fingerprint, rename the bundle to match."""
    if isinstance(att.get("artifacts"), dict):
        for rel in list(att["artifacts"]):
            if (b / rel).is_file():
                att["artifacts"][rel] = sha256_file(b / rel)
    csha = content_hash(att["artifacts"], attested_facts(att))
    att["content_sha256"] = csha
    att["fingerprint"] = f"v22_{csha[:8]}_{att['created_ms']}"
    (b / "attestation.json").write_text(json.dumps(att))
    nb = b.parent / att["fingerprint"]
    b.rename(nb)
    return nb


def test_untouched_bundle_verifies_and_holds_only_its_own_run(chain, tmp_path):
    b = _copy(chain, tmp_path)
    t0 = time.process_time()
    assert verify(b) == []
    assert time.process_time() - t0 < 30  # re-runs the CIs, p-values and gates: seconds, not minutes
    assert set(_att(b)["statistics"]) == {"seed", "bootstrap_b", "randomisation_b", "alpha"}
    cal = [p for p in _att(b)["artifacts"] if p.startswith("calibration/")]
    assert cal and not any("gone_system" in p for p in cal)
    _tally("bundle:stale_calibration_of_an_earlier_run", True, "refused")


TAMPER_FIELDS = {
    "gate_passed": lambda a: a["gates"][0].update(passed=not a["gates"][0]["passed"]),
    "all_blocking_green": lambda a: a.update(all_blocking_green=not a["all_blocking_green"]),
    "code_version": lambda a: a.update(code_version="0000000-forged"),
    "package_version": lambda a: a["versions"].update(polars="0.0.1"),
    "created_utc": lambda a: a.update(created_utc="2001-01-01T00:00:00Z"),
    "new_field": lambda a: a.update(signed_off_by="nobody"),
    "drop_cfg_hash": lambda a: a["cfg_hashes"].popitem(),
}


@pytest.mark.parametrize("case", sorted(TAMPER_FIELDS))
def test_verify_catches_an_edited_attestation_field(chain, tmp_path, case):
    b = _copy(chain, tmp_path)
    att = _att(b)
    TAMPER_FIELDS[case](att)
    (b / "attestation.json").write_text(json.dumps(att))
    problems = verify(b)
    _tally(f"tamper:{case}", any("content hash" in p for p in problems), "caught")
    assert any("content hash" in p for p in problems), problems


@pytest.mark.parametrize("case", ["gate_and_green_flipped", "all_blocking_green", "created_utc"])
def test_verify_rederives_fields_of_a_reattested_attestation(chain, tmp_path, case):
    b = _copy(chain, tmp_path)
    att = _att(b)
    if case == "gate_and_green_flipped":  # every gate passed, consistently: gates.csv says otherwise
        for g in att["gates"]:
            g["passed"] = True
        att["all_blocking_green"] = True
        want = "tables/gates.csv"
    elif case == "all_blocking_green":
        att["all_blocking_green"] = not att["all_blocking_green"]
        want = "all_blocking_green"
    else:
        att["created_utc"] = "2001-01-01T00:00:00Z"
        want = "created_utc"
    nb = _reattest(b, att)
    problems = verify(nb)
    ok = any(want in p for p in problems)
    _tally(f"tamper:reattested_{case}", ok, "caught")
    assert ok, problems


@pytest.mark.parametrize("rel", ["/etc/hostname", "../x", "../../published.json", "calibration/../../../x"])
def test_verify_refuses_artifact_paths_outside_the_bundle(chain, tmp_path, rel):
    b = _copy(chain, tmp_path)
    (b.parent.parent / "x").write_text("outside")
    att = _att(b)
    att["artifacts"][rel] = "0" * 64
    nb = _reattest(b, att)
    problems = verify(nb)
    ok = any(rel in p and "refused" in p for p in problems)
    _tally(f"tamper:artifact_path:{rel}", ok, "caught")
    assert ok, problems


@pytest.mark.parametrize("shape", ["list", "string", "null"])
def test_cli_verify_malformed_artifacts_is_one_fail_line(chain, tmp_path, capsys, shape):
    b = _copy(chain, tmp_path)
    att = _att(b)
    att["artifacts"] = {"list": [["agg.parquet", "00"]], "string": "agg.parquet", "null": None}[shape]
    (b / "attestation.json").write_text(json.dumps(att))
    rc = main(["verify", str(b)])
    err = capsys.readouterr().err
    fails = [ln for ln in err.splitlines() if ln.startswith("FAIL")]
    ok = rc == 1 and len(fails) == 1 and "artifacts" in fails[0] and "Traceback" not in err
    _tally(f"tamper:artifacts_{shape}", ok, "caught")
    assert ok, err


def test_cli_verify_names_a_missing_raw_run(chain, tmp_path, capsys):
    b = _copy(chain, tmp_path)
    rel = sorted(_att(b)["raw_runs"])[0]
    (b.parent.parent / rel).unlink()
    rc = main(["verify", str(b)])
    err = capsys.readouterr().err
    ok = rc == 1 and "raw runs missing" in err and rel in err
    _tally("tamper:raw_run_deleted", ok, "caught")
    assert ok, err


def _edit_scores(b: Path) -> None:
    sc = pl.read_parquet(b / "scores.parquet")
    sc.with_columns(
        pl.when((pl.col("metric") == "ndcg_10") & (pl.col("slice") == "all"))
        .then(pl.col("mean") + 0.05)
        .otherwise(pl.col("mean"))
        .alias("mean")
    ).write_parquet(b / "scores.parquet")


def _edit_comparisons(b: Path) -> None:
    c = pl.read_parquet(b / "comparisons.parquet")
    c.with_columns(pl.col("delta") + 0.05).write_parquet(b / "comparisons.parquet")


def _edit_per_query(b: Path) -> None:
    q = pl.read_parquet(b / "per_query.parquet")
    q.with_columns(pl.lit(1.0).alias("ndcg_10")).write_parquet(b / "per_query.parquet")


def _edit_hero(b: Path) -> None:
    h = pl.read_csv(b / "tables/hero_span_v22.csv")
    h.with_columns(pl.col("recall_50") + 0.02).write_csv(b / "tables/hero_span_v22.csv")


def _edit_score_row(metric: str, column: str, by: float, slice_: str = "all"):
    """A re-attested edit of one value of scores.parquet (its mean unchanged unless `column`)."""

    def edit(b: Path) -> None:
        sc = pl.read_parquet(b / "scores.parquet")
        hit = (pl.col("metric") == metric) & (pl.col("slice") == slice_) & (pl.col("system") == "lens_v22")
        assert sc.filter(hit).height == 1, (metric, slice_)
        sc.with_columns(pl.when(hit).then(pl.col(column) + by).otherwise(pl.col(column)).alias(column)).write_parquet(
            b / "scores.parquet"
        )

    return edit


def _edit_comparison_column(column: str, by: float):
    def edit(b: Path) -> None:
        c = pl.read_parquet(b / "comparisons.parquet")
        first = pl.int_range(pl.len()) == 0
        c.with_columns(pl.when(first).then(pl.col(column) + by).otherwise(pl.col(column)).alias(column)).write_parquet(
            b / "comparisons.parquet"
        )

    return edit


def _edit_gate_value(b: Path) -> None:
    """A forged gate value, edited consistently in the attestation and tables/gates.csv (so
    that the gates table agrees): only re-evaluating the gate from the data catches it."""
    att = _att(b)
    g = next(g for g in att["gates"] if g["name"] == "tail")
    g["value"] = float(g["value"]) + 0.5
    (b / "attestation.json").write_text(json.dumps(att))
    t = pl.read_csv(b / "tables/gates.csv", infer_schema_length=0)
    hit = (pl.col("gate") == "tail") & (pl.col("subject") == g["subject"])
    t.with_columns(pl.when(hit).then(pl.lit(str(g["value"]))).otherwise(pl.col("value")).alias("value")).write_csv(
        b / "tables/gates.csv"
    )


def _edit_seed(b: Path) -> None:
    att = _att(b)
    att["statistics"]["seed"] += 1
    (b / "attestation.json").write_text(json.dumps(att))


def _drop_statistics(b: Path) -> None:
    att = _att(b)
    del att["statistics"]
    (b / "attestation.json").write_text(json.dumps(att))


@pytest.mark.parametrize(
    "case,edit,want",
    [
        # issue 18: every attested number that follows from the bundle's data is re-derived
        ("scores_ci_low", _edit_score_row("ndcg_10", "ci_low", -0.01), "scores.parquet: lens_v22 all ndcg_10 ci_low"),
        (
            "scores_ci_high",
            _edit_score_row("recall_50", "ci_high", 0.01),
            "scores.parquet: lens_v22 all recall_50 ci_high",
        ),
        ("latency_p95", _edit_score_row("lat_p95", "mean", 0.5), "scores.parquet: lens_v22 all lat_p95 mean"),
        ("latency_p99_ci", _edit_score_row("lat_p99", "ci_high", 1.0), "scores.parquet: lens_v22 all lat_p99 ci_high"),
        ("judged_10", _edit_score_row("judged_10", "mean", 0.01), "scores.parquet: lens_v22 all judged_10 mean"),
        ("file_credit", _edit_score_row("file_credit", "mean", -0.01), "scores.parquet: lens_v22 all file_credit"),
        ("comparison_p_value", _edit_comparison_column("p_value", 0.01), "comparisons.parquet: "),
        ("comparison_p_holm", _edit_comparison_column("p_holm", 0.01), "comparisons.parquet: "),
        ("comparison_ci_high", _edit_comparison_column("ci_high", 0.01), "comparisons.parquet: "),
        ("comparison_mde", _edit_comparison_column("mde", 0.01), "comparisons.parquet: "),
        ("gate_value_consistent", _edit_gate_value, "gate tail["),
        ("statistics_seed", _edit_seed, "scores.parquet: "),
        ("statistics_dropped", _drop_statistics, "attestation: statistics"),
        ("scores", _edit_scores, "scores.parquet"),
        ("comparisons", _edit_comparisons, "comparisons.parquet"),
        ("per_query", _edit_per_query, "per_query.parquet"),
        ("hero_table", _edit_hero, "hero table"),
    ],
)
def test_verify_rescores_a_reattested_table(chain, tmp_path, case, edit, want):
    b = _copy(chain, tmp_path)
    edit(b)
    nb = _reattest(b, _att(b))
    problems = verify(nb)
    ok = any(p.startswith(want) for p in problems) and all("\n" not in p for p in problems)
    _tally(f"tamper:reattested_{case}", ok, "caught")
    assert ok, problems


# ----------------------------------------------------------------------------------------------
# kill -9 at points
# ----------------------------------------------------------------------------------------------
def _killer(patch: str, body: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `body` in a child whose `patch` (os.replace / os.rename) SIGKILLs the child when its
    destination matches `when(src, dst)` (defined in `body`'s preamble)."""
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        _real = os.{patch}
        def _patched(src, dst, *a, **k):
            if when(str(src), str(dst)):
                os.kill(os.getpid(), signal.SIGKILL)
            return _real(src, dst, *a, **k)
        os.{patch} = _patched
        """
    ) + textwrap.dedent(body)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    return p


def _env(data: Path) -> dict:
    return {**os.environ, "LENS_DATA_DIR": str(data), "PYTHONPATH": str(REPO)}


def _raw(tmp_path: Path) -> Path:
    cfg = load_config()
    sim = Simulator(cfg.sim.model_copy(update={"queries_per_suite": 5}), seed=3)
    recs = sim.run(baseline(cfg), "r1", sim.queries, 150.0, 20, 1.7e12)
    p = tmp_path / "runs" / "lens_v22.ndjson"
    p.parent.mkdir(parents=True)
    write_raw_run(p, recs)
    return p


def test_kill9_during_ingest_leaves_no_orphan_after_the_next_run(tmp_path):
    raw = _raw(tmp_path)
    out = tmp_path / "out"
    p = _killer(
        "replace",
        f"""
        def when(src, dst):
            return dst.endswith("/hits.parquet")
        from lens_cli.main import main
        main(["ingest", {str(raw)!r}, "--out", {str(out)!r}])
        """,
        env=_env(tmp_path / "d"),
    )
    orphans = list(out.glob(".hits.parquet.*"))
    killed = p.returncode == -signal.SIGKILL and orphans and not (out / "hits.parquet").exists()
    assert main(["ingest", str(raw), "--out", str(out)]) == 0
    ok = bool(killed) and not list(out.glob(".hits.parquet.*")) and (out / "hits.parquet").is_file()
    _tally("kill9:ingest", ok, "survived")
    assert ok, (p.returncode, p.stderr[-2000:], orphans, sorted(x.name for x in out.iterdir()))


def _trec(tmp_path: Path, shift: int = 0) -> tuple[Path, Path]:
    run = tmp_path / f"run{shift}.trec"
    qrels = tmp_path / "qrels.trec"
    run.write_text(
        "".join(
            f"q{q} Q0 repo:src/f{(d + shift) % 7}.py:1-10 {d + 1} {10 - d} t\n" for q in range(12) for d in range(5)
        )
    )
    qrels.write_text("".join(f"q{q} 0 repo:src/f{q % 7}.py:1-10 2\n" for q in range(12)))
    return run, qrels


def _set_is_complete(out: Path) -> bool:
    marker = json.loads((out / COMPLETE_MARKER).read_text())
    names = {p.name for p in out.iterdir()} - {COMPLETE_MARKER}
    return names == set(marker["files"]) and all(sha256_file(out / n) == h for n, h in marker["files"].items())


@pytest.mark.parametrize("point", ["writing_scores", "between_the_two_renames"])
def test_kill9_during_score_into_an_existing_out_dir(tmp_path, point, capsys):
    run0, qrels = _trec(tmp_path, 0)
    run1, _ = _trec(tmp_path, 3)
    out = tmp_path / "out"
    assert main(["score", "--hits", str(run0), "--qrels", str(qrels), "--out", str(out), "--bootstrap", "50"]) == 0
    assert _set_is_complete(out)
    old = {n: sha256_file(out / n) for n in ("per_query.parquet", "scores.parquet")}
    when = (
        'return dst.endswith("/scores.parquet")'
        if point == "writing_scores"
        else 'return os.path.basename(dst) == "out" and ".out.p" in src'
    )
    p = _killer(
        "replace" if point == "writing_scores" else "rename",
        f"""
        def when(src, dst):
            {when}
        from lens_cli.main import main
        main(["score", "--hits", {str(run1)!r}, "--qrels", {str(qrels)!r}, "--out", {str(out)!r}, "--bootstrap", "50"])
        """,
        env=_env(tmp_path / "d"),
    )
    killed = p.returncode == -signal.SIGKILL
    if point == "writing_scores":  # the old set untouched
        consistent = _set_is_complete(out) and all(sha256_file(out / n) == h for n, h in old.items())
    else:  # out moved aside: no set at all, never a mix
        consistent = not out.exists()
    leftovers = [x for x in tmp_path.iterdir() if x.name.startswith(".out.")]
    assert main(["score", "--hits", str(run1), "--qrels", str(qrels), "--out", str(out), "--bootstrap", "50"]) == 0
    capsys.readouterr()
    ok = (
        killed
        and consistent
        and bool(leftovers)
        and _set_is_complete(out)
        and sha256_file(out / "per_query.parquet") != old["per_query.parquet"]
        and not [x for x in tmp_path.iterdir() if x.name.startswith(".out.")]
    )
    _tally(f"kill9:score_{point}", ok, "survived")
    assert ok, (p.returncode, p.stderr[-2000:], leftovers)


def test_score_into_a_dir_with_other_files_marks_the_set(tmp_path, capsys):
    run0, qrels = _trec(tmp_path, 0)
    out = tmp_path / "mixed"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["score", "--hits", str(run0), "--qrels", str(qrels), "--out", str(out), "--no-ci"]) == 0
    capsys.readouterr()
    marker = json.loads((out / COMPLETE_MARKER).read_text())
    assert set(marker["files"]) == {"per_query.parquet"} and (out / "notes.txt").read_text() == "mine"


def _tiny(tmp_path: Path) -> dict:
    f = tmp_path / "t.csv"
    f.write_text("a\n1\n")
    return {"hero_table": f}


def _green() -> list[GateResult]:
    return [GateResult("pool", 0.95, 0.9, True, True)]


def test_kill9_during_bundle_assemble_then_the_next_one_cleans_up(tmp_path):
    d = tmp_path / "data"
    (tmp_path / "t.csv").write_text("a\n1\n")
    p = _killer(
        "rename",
        f"""
        def when(src, dst):
            return "/.tmp-" in src
        from pathlib import Path
        from lens_core.decide.gates import GateResult
        from lens_core.publish.bundle import assemble
        assemble(Path({str(d)!r}), {{"hero_table": Path({str(tmp_path / "t.csv")!r})}}, [], {{"s": "x"}},
                 [GateResult("pool", 0.95, 0.9, True, True)], {{"source": "sim"}})
        """,
        env=_env(d),
    )
    orphans = list((d / "bundles").glob(".tmp-*"))
    killed = p.returncode == -signal.SIGKILL and orphans and read_published(d) is None
    r = assemble(d, _tiny(tmp_path), [], {"s": "x"}, _green(), {"source": "sim"})
    entries = sorted(x.name for x in (d / "bundles").iterdir())
    ok = bool(killed) and entries == [r.fingerprint] and read_published(d)["fingerprint"] == r.fingerprint
    _tally("kill9:bundle_assemble", ok, "survived")
    assert ok, (p.returncode, p.stderr[-2000:], entries)


def test_kill9_during_publication_keeps_pointer_and_site_together(chain, tmp_path):
    b = _copy(chain, tmp_path)
    d = b.parent.parent
    for p in (d / "published.json", d / "site"):
        if p.is_symlink() or p.is_file():
            p.unlink()
    (d / "published.json").write_text(json.dumps({"fingerprint": b.name, "bundle": f"bundles/{b.name}"}))
    publish_site(d)
    b2 = d / "bundles" / "v22_00000000_1"
    shutil.copytree(b, b2, ignore=shutil.ignore_patterns("site"))
    p = _killer(
        "replace",
        f"""
        def when(src, dst):
            return os.path.basename(dst) == "site"
        from pathlib import Path
        from lens_core.publish.bundle import publish_lock, publish_pointer
        from lens_core.publish.site import render_served_site
        d = Path({str(d)!r})
        with publish_lock(d):
            publish_pointer(d, {{"fingerprint": "v22_00000000_1", "bundle": "bundles/v22_00000000_1"}},
                            d / "bundles/v22_00000000_1", render_served_site)
        """,
        env=_env(d),
    )

    def served_fp() -> str:
        import re

        page = (d / "site" / "index.html").read_text()
        return re.search(r'<code id="fingerprint">([^<]+)</code>', page).group(1)

    killed = p.returncode == -signal.SIGKILL
    before = read_published(d)["fingerprint"] == b.name == served_fp()
    (d / "published.json").resolve()  # still resolves
    publish_site(d)  # the next publication: cleans the killed stage
    # the killed child's stage and its half-made link are gone (the data dir was copied from the
    # fixture's, so a stage of this live process may sit beside them: not an orphan of a dead one)
    stages = [x.name for x in d.iterdir() if x.name.startswith(".site")]
    left = [s for s in stages if "v22_00000000_1" in s or "_link-" in s]
    served = os.readlink(d / "site")
    ok = killed and before and read_published(d)["fingerprint"] == served_fp() and not left and served in stages
    _tally("kill9:publication_pointer_and_site", ok, "survived")
    assert ok, (p.returncode, killed, before, stages, served)


# ----------------------------------------------------------------------------------------------
# monotonic publication, the per-partition lock
# ----------------------------------------------------------------------------------------------
def test_an_older_partition_publishes_only_when_allowed(tmp_path, monkeypatch):
    monkeypatch.delenv("LENS_ALLOW_OLDER", raising=False)
    d = tmp_path / "data"

    def go(partition, now, **kw):
        return assemble(
            d, _tiny(tmp_path), [], {"s": "x"}, _green(), {"source": "sim"}, extra={"partition": partition},
            now_ms=now, **kw,
        )  # fmt: skip

    new = go("2026-11-15", 10)
    assert new.published
    old = go("2026-11-08", 20)
    refused = not old.published and "older" in (old.refused_older or "")
    refused = refused and read_published(d)["fingerprint"] == new.fingerprint
    _tally("publish:older_partition", refused, "refused")
    assert refused
    allowed = go("2026-11-08", 30, allow_older=True)
    assert allowed.published and read_published(d)["fingerprint"] == allowed.fingerprint
    monkeypatch.setenv("LENS_ALLOW_OLDER", "1")
    assert go("2026-11-01", 40).published
    assert build_parser().parse_args(["run", "--allow-older"]).allow_older


def test_runs_of_one_partition_are_serialised(tmp_path):
    d = tmp_path / "data"
    order: list[str] = []

    def second():
        with partition_lock(d, PARTITION):
            order.append("second")

    with partition_lock(d, PARTITION):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first done")
        with partition_lock(d, "2026-11-15"):  # another partition does not wait
            order.append("other")
    t.join(5)
    ok = order == ["first done", "other", "second"] and (d / "locks" / f"run-{PARTITION}.lock").is_file()
    _tally("lock:same_partition", ok, "survived")
    assert ok, order


def test_the_partition_lease_serialises_runs_and_frees_a_finished_ones(tmp_path):
    """The lease of the Dagster layer (runs launched by the daemon or the UI): a second owner
    waits while the first is live, takes over once it is released, takes over at once from a
    holder that is not live (its run finished), and gives up after its wait with one line."""
    d = tmp_path / "data"
    live = {"run-a": True}
    order: list[str] = []
    a = {**lease_owner("run-a"), "pid": 1}
    assert acquire_partition_lease(d, PARTITION, a, lambda o: live.get(o["run_id"], False), 0) is None
    assert acquire_partition_lease(d, PARTITION, a, lambda o: True, 0) is None  # the same run: re-entrant

    def second():
        acquire_partition_lease(d, PARTITION, lease_owner("run-b"), lambda o: live.get(o["run_id"], False), 10, 0.02)
        order.append("b holds")

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.3)
    order.append("a done")
    assert release_partition_lease(d, PARTITION, "run-a")
    t.join(5)
    serial = order == ["a done", "b holds"] and read_partition_lease(d, PARTITION)["run_id"] == "run-b"
    assert not release_partition_lease(d, PARTITION, "run-a")  # not a's any more: left alone
    with pytest.raises(PartitionBusy, match="held by run run-b") as ei:
        acquire_partition_lease(d, PARTITION, lease_owner("run-c"), lambda o: True, 0.2, 0.05)
    busy = "\n" not in str(ei.value) and read_partition_lease(d, PARTITION)["run_id"] == "run-b"
    stale = acquire_partition_lease(d, PARTITION, lease_owner("run-c"), lambda o: False, 0)  # b finished
    took_over = (
        stale is not None and stale["run_id"] == "run-b" and read_partition_lease(d, PARTITION)["run_id"] == "run-c"
    )
    ok = serial and busy and took_over
    _tally("lock:lease_same_partition", ok, "survived")
    assert ok, (order, busy, stale)


def test_a_second_dagster_run_of_a_held_partition_is_refused_without_a_page(tmp_path, monkeypatch):
    """Two runs of one partition launched through Dagster (not `lens-eval run`): while another
    live run holds the partition, the weekly job's first step waits (LENS_PARTITION_WAIT_S), then
    fails with one line naming the holder; no later step runs, the run is tagged refused and the
    paging sensor pages nothing. Once the holder is gone, the next run takes the lease."""
    from lens_assets.definitions import defs  # lazy: the Dagster job, for this test only
    from lens_assets.paging_sensor import evaluate_paging
    from resources.paging import PagerResource

    d = tmp_path / "data"
    monkeypatch.setenv("LENS_DATA_DIR", str(d))
    monkeypatch.setenv("DATA_SOURCE", "sim")
    monkeypatch.setenv("LENS_PARTITION_WAIT_S", "0.5")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        acquire_partition_lease(d, PARTITION, {**lease_owner("other-run"), "pid": holder.pid}, lambda o: True, 0)
        with dg.instance_for_test() as instance:
            graph = defs.get_repository_def().asset_graph
            pager = PagerResource(url="")  # no URL: an event would only be logged; the cursor shows it
            logs: list[str] = []
            log = type("L", (), {"error": logs.append, "info": logs.append, "warning": logs.append})()
            cursor, _ = evaluate_paging(instance, graph, pager, None, log)
            job = defs.resolve_job_def("weekly_lens_job")
            t0 = time.monotonic()
            res = job.execute_in_process(partition_key=PARTITION, instance=instance, raise_on_error=False)
            waited = time.monotonic() - t0
            cursor, summary = evaluate_paging(instance, graph, pager, cursor, log)
            failures = [e for e in res.all_events if e.is_step_failure]
            refused = (
                not res.success
                and [e.step_key for e in failures] == ["query_suites"]
                and "held by run other-run" in str(failures[0].event_specific_data.error)
                and instance.get_run_by_id(res.run_id).tags.get("lens/refused") == "PartitionBusy"
                and json.loads(cursor)["incidents"] == {}
                and waited >= 0.5
            )
            holder.kill()
            holder.wait(10)
            sub = job.execute_in_process(
                partition_key=PARTITION,
                instance=instance,
                asset_selection=[dg.AssetKey("query_suites"), dg.AssetKey("ground_truth")],
                raise_on_error=False,
            )
            took = sub.success and read_partition_lease(d, PARTITION)["run_id"] == sub.run_id
    finally:
        holder.kill()
        holder.wait(10)
    _tally("lock:dagster_second_run_same_partition", refused and took, "refused")
    assert refused, (res.success, failures and str(failures[0].event_specific_data.error)[:300], summary, waited)
    assert took


def test_the_weekly_run_gives_its_partition_lease_back(chain):
    d, _ = chain
    assert read_partition_lease(d, PARTITION) is None  # release_bundle gave it back
    assert (d / "locks" / f"run-{PARTITION}.lease.lock").is_file()  # it was taken


def test_an_older_week_is_a_plain_refusal_not_a_page(chain, tmp_path, capsys):
    """A green run of a week older than the published one (no --allow-older): not published, the
    verdict's `published` check is WARN with the reason (`refused`), the run succeeds, no P0 page
    (neither `lens-eval run`'s nor the sensor's), and the pointer stays."""
    from lens_assets.definitions import defs  # lazy: the Dagster job, for this test only
    from lens_assets.paging_sensor import evaluate_paging
    from lens_assets.run import dagster_instance, run_weekly
    from resources.paging import PagerResource

    d = tmp_path / "data"
    shutil.copytree(chain[0], d, symlinks=True)
    first = read_published(chain[0])
    if first is None:
        pytest.skip("the chain's week was not published (red): an older-week refusal needs a green week")
    publish_pointer(d, {**first, "partition": "2026-11-15"})  # a newer week is the published one
    key = dg.AssetCheckKey(dg.AssetKey("release_verdict"), "published")
    graph = defs.get_repository_def().asset_graph
    pager = PagerResource(url="")  # no URL: an event would only be logged; the sensor's cursor shows it
    logs: list[str] = []
    log = type("L", (), {"error": logs.append, "info": logs.append, "warning": logs.append})()
    with own_dirs(d, tmp_path / "home"):
        os.environ.pop("LENS_ALLOW_OLDER", None)
        with dagster_instance() as instance:
            cursor, _ = evaluate_paging(instance, graph, pager, None, log)
        res = run_weekly(PARTITION, queries_per_suite=30, progress=False, pager=pager)
        with dagster_instance() as instance:
            cursor, summary = evaluate_paging(instance, graph, pager, cursor, log)
            ev = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key].evaluation
    ok = (
        res["success"]
        and not res["published"]
        and "older than the published" in res["refused"]
        and "paged" not in res
        and read_published(d)["partition"] == "2026-11-15"
        and not ev.passed
        and ev.severity == dg.AssetCheckSeverity.WARN
        and "older than the published" in str(ev.metadata["refused"].value)
        and json.loads(cursor)["incidents"] == {}
        and not (d / "paging" / "publication_incidents.json").is_file()
    )
    _tally("publish:older_partition_not_paged", ok, "refused")
    assert ok, (res.get("errors"), res.get("refused"), res["published"], summary, ev)
