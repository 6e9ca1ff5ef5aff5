"""Label Studio round trip against a real Label Studio server (issue 16).

Label Studio (PyPI `label-studio`, pinned) is installed into its OWN virtualenv, never the
product's .venv: $LENS_LABELSTUDIO_VENV, default ~/.cache/lens-tests/labelstudio-venv (or under
$XDG_CACHE_HOME), reused across runs (a stamp names the installed version). A first install
takes about 2 minutes; a server start on a fresh data dir (migrations) about 45 s on 2 cores.
When the install is impossible (no registry, pip failure) the test is skipped with the reason.

The server runs on 127.0.0.1 on a free port with a temporary data dir, no browser, no version
check/analytics/Sentry, and a user + legacy API token created non-interactively by
`label-studio start --username --password --user-token --enable-legacy-api-token`. Through the
REST API the test creates a project with `label_studio_config()`, imports the tasks of
`to_label_studio_tasks()`, posts annotations as a judge would (one cancelled, one task left
alone), exports them (export snapshot with full `completed_by`, and the plain JSON export) and
checks the qrels of `import_label_studio()`. Then the judge finishes the queue (the skipped task
and the badly labelled one), and each export goes through `lens-eval judge import` (a
subprocess, as a team runs it) into a qrels file that re-scores a small synthetic week whose pool
is the queue's: judged@10 rises with each export and the pool gate turns from fail to pass.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import polars as pl
import pytest

from lens_core.decide.gates import pool_gate
from lens_core.judge.judging import build_pool, judge, judged_members
from lens_core.judge.qrels import read_qrels_files
from lens_core.judge.queue import (
    import_label_studio,
    judging_queue,
    label_studio_config,
    to_label_studio_tasks,
    write_trec_qrels,
)
from lens_core.measures.metrics import per_query_metrics
from lens_core.measures.scoring import score

pytestmark = pytest.mark.e2e

LS_VERSION = "1.23.2"
INSTALL_TIMEOUT_S = 1200
START_TIMEOUT_S = 240
JUDGE, PASSWORD, TOKEN = "judge@example.com", "lens-judge-pw-1", "lens-e2e-token-5f1c2a9b"
GRADES = (0, 1, 2, 3)
REPO = Path(__file__).resolve().parents[1]
SPAN = ["qid", "repo", "path", "start_line", "end_line"]


def _venv_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("LENS_LABELSTUDIO_VENV") or cache / "lens-tests" / "labelstudio-venv")


def _ensure_label_studio() -> Path:
    """The label-studio executable of the test's own venv; installs it once (file-locked), else skips."""
    venv = _venv_dir()
    exe, stamp = venv / "bin" / "label-studio", venv / f".installed-label-studio-{LS_VERSION}"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / ".labelstudio-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and exe.exists():
            return exe
        steps = [[sys.executable, "-m", "venv", str(venv)]] if not (venv / "bin" / "python").exists() else []
        steps.append(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--quiet",
                f"label-studio=={LS_VERSION}",
            ]
        )
        for cmd in steps:
            try:
                out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as exc:
                pytest.skip(f"cannot install label-studio=={LS_VERSION}: {exc}")
            if out.returncode:
                tail = " | ".join((out.stderr or out.stdout).strip().splitlines()[-3:])
                pytest.skip(f"cannot install label-studio=={LS_VERSION} ({cmd[2]} exit {out.returncode}): {tail}")
        stamp.touch()
        return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """Minimal Label Studio REST client (legacy token auth)."""

    def __init__(self, base: str):
        self.base = base

    def __call__(self, method: str, path: str, body=None, *, expect=(200, 201), timeout=60):
        req = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        assert status in expect, f"{method} {path} -> {status}: {raw[:400]!r}"
        return json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A running Label Studio on 127.0.0.1 (own venv, temp data dir); stopped at teardown."""
    t0 = time.monotonic()
    exe = _ensure_label_studio()
    installed_s = time.monotonic() - t0
    data, port = tmp_path_factory.mktemp("labelstudio"), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "HEARTEX_"))}
    env |= {
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_SENTRY_DSN": "",
        "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
        "LABEL_STUDIO_DEBUG": "false",
        "PYTHONUNBUFFERED": "1",
    }
    log = open(data / "server.log", "w")  # noqa: SIM115 - outlives this block: closed at teardown
    proc = subprocess.Popen(
        [
            str(exe),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(port),
            "--username",
            JUDGE,
            "--password",
            PASSWORD,
            "--user-token",
            TOKEN,
            "--enable-legacy-api-token",
        ],
        env=env,
        cwd=data,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    base, t1 = f"http://127.0.0.1:{port}", time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"label-studio exited {proc.returncode}: {(data / 'server.log').read_text()[-2000:]}")
            if time.monotonic() - t1 > START_TIMEOUT_S:
                pytest.fail(f"label-studio not up in {START_TIMEOUT_S}s: {(data / 'server.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(base + "/health", timeout=5) as resp:
                if resp.status == 200:
                    break
            time.sleep(1)
        print(f"label-studio {LS_VERSION}: install/check {installed_s:.0f}s, startup {time.monotonic() - t1:.0f}s")
        yield Api(base)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()


# The synthetic week: (system, qid, rank, path, start, end) in repo `r`; its pool is the queue's.
WEEK_HITS = [
    ("s1", "q1", 1, "a.py", 1, 3),
    ("s1", "q1", 2, "a.py", 10, 12),
    ("s1", "q1", 4, "c.py", 1, 5),
    ("s2", "q1", 1, "b.py", 1, 5),
    ("s2", "q1", 2, "a.py", 1, 3),
    ("s1", "q2", 2, "a.py", 3, 4),
    ("s2", "q2", 3, "d.py", 1, 9),
]
EARLIER = pl.DataFrame(  # a label from an earlier round of judging
    {"qid": ["q1"], "repo": ["r"], "path": ["c.py"], "start_line": [1], "end_line": [5], "rel": [1]},
    schema_overrides={"start_line": pl.Int32, "end_line": pl.Int32, "rel": pl.Int32},
).with_columns(pl.lit("human:earlier").alias("source"))
QUERIES = pl.DataFrame(
    {
        "qid": ["q1", "q2"],
        "text": ["read a config file", "retry with backoff"],
        "suite": ["nl", "nl"],
        "intent": ["nl", "nl"],
        "language": ["python", "python"],
    }
)
NO_GROUND_TRUTH = EARLIER.clear().drop("source")  # a foreign suite: only explicit labels


def _week_hits() -> pl.DataFrame:
    return pl.DataFrame(
        [("w1", s, q, rk, "r", p, a, b, True, 0.9 - rk / 10) for s, q, rk, p, a, b in WEEK_HITS],
        schema={
            "run_id": pl.String,
            "system": pl.String,
            "qid": pl.String,
            "rank": pl.Int32,
            "repo": pl.String,
            "path": pl.String,
            "start_line": pl.Int32,
            "end_line": pl.Int32,
            "in_sla": pl.Boolean,
            "score": pl.Float64,
        },
        orient="row",
    )


def _week_agg() -> pl.DataFrame:
    rows = [("w1", s, q, "nl", "nl", "python", 20.0, True, 1, 1.0, None) for s in ("s1", "s2") for q in ("q1", "q2")]
    return pl.DataFrame(
        rows,
        schema={
            "run_id": pl.String,
            "system": pl.String,
            "qid": pl.String,
            "suite": pl.String,
            "intent": pl.String,
            "language": pl.String,
            "lat_ms": pl.Float64,
            "within_sla": pl.Boolean,
            "probes": pl.Int32,
            "cpu_ms": pl.Float64,
            "error": pl.String,
        },
        orient="row",
    )


def _queue(tmp_path: Path) -> pl.DataFrame:
    """The week's pool: q1 has 3 unjudged members and 1 judged, q2 has 2 unjudged; code read from files."""
    src = tmp_path / "src"
    (src / "r").mkdir(parents=True)
    (src / "r" / "a.py").write_text("".join(f"line {i}\n" for i in range(1, 21)))

    def reader(repo, path, start, end):
        f = src / repo / path
        return "".join(f.read_text().splitlines(keepends=True)[start - 1 : end]) if f.exists() else None

    return judging_queue(build_pool(_week_hits()), EARLIER, QUERIES, cap_per_query=3, source_reader=reader)


def _rescore(human: pl.DataFrame | None, queue_path: Path) -> tuple[dict[str, float], dict, int]:
    """The synthetic week scored with `human` labels merged as the weekly run merges them:
    (judged@10 per system, the pool gate's GateResult per system, judging queue size)."""
    pool = build_pool(_week_hits())
    labels = EARLIER if human is None else pl.concat([EARLIER, human], how="vertical_relaxed")
    qrels = judge(pool, NO_GROUND_TRUTH, labels, policy="explicit")
    scores = score(per_query_metrics(_week_agg(), _week_hits(), qrels, QUERIES), b=2000, seed=1)
    judged = judged_members(pool, qrels).filter(pl.col("judged")).select(SPAN).with_columns(pl.lit(1).alias("rel"))
    queue = judging_queue(pool, judged, QUERIES, cap_per_query=3)
    gates = pool_gate(scores, queue.height, str(queue_path))
    j = scores.filter((pl.col("metric") == "judged_10") & (pl.col("slice") == "all"))
    return dict(zip(j["system"], j["mean"])), {g.subject: g for g in gates}, queue.height


def _lens_eval_import(export: Path, out: Path, tmp_path: Path) -> pl.DataFrame:
    """`lens-eval judge import EXPORT --out F` in a fresh interpreter; F read back with the reader
    the weekly run uses for human qrels."""
    env = {k: v for k, v in os.environ.items() if k not in ("LENS_CONFIG", "LENS_QRELS")}
    env |= {"LENS_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "lens_cli", "judge", "import", str(export), "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith(f"-> {out}") and "human:" in proc.stdout
    return read_qrels_files([out], GRADES)


def _snapshot_export(api: Api, pid: int) -> list[dict]:
    """An export snapshot with the annotators' emails (synchronous without redis; polled to be safe)."""
    snap = api(
        "POST",
        f"/api/projects/{pid}/exports/",
        {"title": "qrels", "serialization_options": {"annotations__completed_by": {"only_id": False}}},
    )
    deadline = time.monotonic() + 60
    while snap["status"] != "completed":
        assert snap["status"] not in ("failed",) and time.monotonic() < deadline, snap
        time.sleep(1)
        snap = api("GET", f"/api/projects/{pid}/exports/{snap['id']}")
    return api("GET", f"/api/projects/{pid}/exports/{snap['id']}/download?exportType=JSON")


def _choice(grade: str) -> dict:
    return {"result": [{"from_name": "rel", "to_name": "code", "type": "choices", "value": {"choices": [grade]}}]}


def test_label_studio_round_trip(label_studio, tmp_path):
    api = label_studio
    queue = _queue(tmp_path)
    tasks = to_label_studio_tasks(queue)
    assert [t["data"]["docno"] for t in tasks] == [
        "r:a.py:1-3",
        "r:b.py:1-5",
        "r:a.py:10-12",
        "r:a.py:3-4",
        "r:d.py:1-9",
    ]
    project = api("POST", "/api/projects", {"title": "lens judging e2e", "label_config": label_studio_config(GRADES)})
    pid = project["id"]
    imported = api("POST", f"/api/projects/{pid}/import", tasks)
    assert imported["task_count"] == len(tasks)
    listed = api("GET", f"/api/tasks?project={pid}&page_size=100")
    listed = listed["tasks"] if isinstance(listed, dict) else listed
    ids = {(t["data"]["qid"], t["data"]["docno"]): t["id"] for t in listed}
    assert len(ids) == len(tasks)
    assert (
        next(t for t in listed if t["data"]["docno"] == "r:a.py:10-12")["data"]["code"] == "line 10\nline 11\nline 12\n"
    )

    # the judge: graded choices (as the UI saves them, by alias), one skip, one task left for later
    judged = {("q1", "r:a.py:1-3"): "3", ("q1", "r:b.py:1-5"): "0", ("q2", "r:a.py:3-4"): "2"}
    for key, grade in judged.items():
        api("POST", f"/api/tasks/{ids[key]}/annotations", _choice(grade))
    api("POST", f"/api/tasks/{ids['q1', 'r:a.py:10-12']}/annotations", {"result": [], "was_cancelled": True})

    # export snapshot with the annotator's email
    (tmp_path / "export.json").write_text(json.dumps(_snapshot_export(api, pid)))

    qrels = import_label_studio(tmp_path / "export.json", grades=GRADES)
    assert qrels.rows() == [
        ("q1", "r", "a.py", 1, 3, 3, f"human:{JUDGE}"),
        ("q1", "r", "b.py", 1, 5, 0, f"human:{JUDGE}"),
        ("q2", "r", "a.py", 3, 4, 2, f"human:{JUDGE}"),
    ]
    assert write_trec_qrels(qrels, tmp_path / "human.qrels") == 3
    assert (tmp_path / "human.qrels").read_text().splitlines() == [
        "q1 0 r:a.py:1-3 3",
        "q1 0 r:b.py:1-5 0",
        "q2 0 r:a.py:3-4 2",
    ]

    # the plain JSON export carries completed_by as the user id
    plain = api("GET", f"/api/projects/{pid}/export?exportType=JSON")
    by_id = import_label_studio(plain, grades=GRADES)
    user_id = api("GET", "/api/current-user/whoami")["id"]
    assert by_id.drop("source").equals(qrels.drop("source"))
    assert set(by_id["source"]) == {f"human:{user_id}"}

    # Label Studio stores a choice outside the config as is (no server-side check): the import refuses it
    bad = api("POST", f"/api/tasks/{ids['q2', 'r:d.py:1-9']}/annotations", _choice("7"))
    with pytest.raises(ValueError, match=rf"^task {ids['q2', 'r:d.py:1-9']} annotation \d+: label '7' outside"):
        import_label_studio(api("GET", f"/api/projects/{pid}/export?exportType=JSON"), grades=GRADES)

    # judged spans leave the next queue
    assert queue.join(qrels, on=["qid", "repo", "path", "start_line", "end_line"], how="anti").height == 2

    # -- back into the chain: `lens-eval judge import`, then the week re-scored ------------------
    queue_path = tmp_path / "judging" / "tasks.json"
    judged0, gate0, size0 = _rescore(None, queue_path)
    assert size0 == queue.height == 5 and not any(g.passed for g in gate0.values())
    for g in gate0.values():  # the failing gate says what to do: the queue's size and where it is
        assert f"; 5 pool member(s) to judge in the judging queue ({queue_path})" in g.reason
    assert judged0 == pytest.approx({"s1": 1 / 4, "s2": 0.0})  # only c.py (the earlier label)

    human1 = _lens_eval_import(tmp_path / "export.json", tmp_path / "judgments" / "week-1.parquet", tmp_path)
    assert human1.equals(qrels)  # the CLI writes what import_label_studio reads, sources kept
    judged1, gate1, size1 = _rescore(human1, queue_path)
    assert all(judged1[s] > judged0[s] for s in judged0) and size1 == 2  # skipped and left-alone tasks
    assert judged1 == pytest.approx({"s1": 3 / 4, "s2": 2 / 3}) and not any(g.passed for g in gate1.values())

    # the judge finishes: the skipped task gets a label, the bad one is corrected
    api("POST", f"/api/tasks/{ids['q1', 'r:a.py:10-12']}/annotations", _choice("1"))
    api("PATCH", f"/api/annotations/{bad['id']}", _choice("0"))
    (tmp_path / "export-2.json").write_text(json.dumps(_snapshot_export(api, pid)))
    human2 = _lens_eval_import(tmp_path / "export-2.json", tmp_path / "judgments" / "week-2.txt", tmp_path)
    assert set(human2["source"]) == {"human:week-2.txt"}  # TREC lines carry no annotator
    assert human2.select(SPAN + ["rel"]).rows() == [
        ("q1", "r", "a.py", 1, 3, 3),
        ("q1", "r", "a.py", 10, 12, 1),
        ("q1", "r", "b.py", 1, 5, 0),
        ("q2", "r", "a.py", 3, 4, 2),
        ("q2", "r", "d.py", 1, 9, 0),
    ]
    judged2, gate2, size2 = _rescore(human2, queue_path)
    assert judged2 == {"s1": 1.0, "s2": 1.0} and all(g.passed for g in gate2.values()) and size2 == 0
