"""Object storage as the system of record: `LENS_DATA_DIR=s3://bucket/prefix` (issue 22 item 4).

Against a real S3-compatible server on loopback: PyPI `moto` in server mode
(`ThreadedMotoServer`, a free port on 127.0.0.1), credentials and endpoint from the standard AWS
variables. The protocol (`lens_core.common.objectstore`): each object one whole PUT with its
sha256 as metadata, a bundle's objects before its manifest (`attestation.json`), and
`published.json` last of all with a conditional PUT (`If-Match` the ETag read, `If-None-Match: *`
when absent). The unit tests check each commit point and the two failure cases of publication (a
publisher losing the conditional write, a crash between a bundle's objects and its manifest); the
end-to-end test runs one weekly partition (simulator, small suite, a temporary DAGSTER_HOME) with
the data dir in the bucket and verifies the bundle from there, with the working copy deleted.

Without boto3/moto (the `s3` extra) the tests skip with the reason, except under CI, where they
fail.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from lens_core.common import objectstore
from lens_core.common.contracts import BUNDLE_FILES
from lens_core.common.hashing import sha256_file
from lens_core.common.settings import data_dir
from lens_core.decide.gates import GateResult
from tests.browser import require_components
from tests.conftest import new_dagster_home

REPO = Path(__file__).resolve().parents[1]
PARTITION = "2026-11-29"
QUERIES_PER_SUITE = 40
INSTALL_HINT = "pip install -e '.[s3]'"
SECRET = "lens-test-" + secrets.token_hex(12)  # the secret key: must never show up anywhere


def require_s3() -> None:
    problems = []
    for mod in ("boto3", "moto.server", "flask"):
        try:
            __import__(mod)
        except ImportError:
            problems.append(f"the {mod.split('.')[0]} Python package is not installed (the `s3` extra: {INSTALL_HINT})")
    require_components("object-storage", problems)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on a free loopback port for this module's tests; its endpoint URL."""
    require_s3()
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _aws_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "lenstestkey",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }


@pytest.fixture
def bucket(s3_server, tmp_path, monkeypatch):
    """A fresh bucket; LENS_DATA_DIR=s3://<bucket>/lens, its working copy in tmp_path/work."""
    import boto3

    for k, v in _aws_env(s3_server).items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", objectstore.ENDPOINT_ENV, "DATA_SOURCE"):
        monkeypatch.delenv(k, raising=False)
    name = f"lens-{secrets.token_hex(6)}"
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=name)
    monkeypatch.setenv("LENS_DATA_DIR", f"s3://{name}/lens")
    monkeypatch.setenv(objectstore.WORK_DIR_ENV, str(tmp_path / "work"))
    return name, client


def _keys(client, bucket: str, prefix: str = "") -> list[str]:
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


def _body(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


# ---------------------------------------------------------------------------------------------
# Bad input: one clear line, no secret
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url, words",
    [
        ("s3://", "not a valid S3 bucket name"),
        ("s3://Bad_Bucket/x", "not a valid S3 bucket name"),
        ("gs://bucket/x", "only s3:// URLs"),
        ("s3://bucket/a/../b", "'..' segment"),
        ("s3://bucket/x?versionId=1", "query or fragment"),
        ("s3://AKIDEXAMPLE:topsecretvalue@bucket/x", "credentials in the URL are refused"),
    ],
)
def test_a_bad_data_dir_url_is_refused_in_one_line(url, words, monkeypatch):
    monkeypatch.setenv("LENS_DATA_DIR", url)
    with pytest.raises(ValueError) as e:
        data_dir()
    msg = str(e.value)
    assert words in msg and "\n" not in msg and "topsecretvalue" not in msg and "AKIDEXAMPLE" not in msg, msg


def test_the_working_copy_is_local_and_derived_from_the_url(tmp_path, monkeypatch):
    monkeypatch.delenv(objectstore.WORK_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("LENS_DATA_DIR", "s3://lens-bucket/weekly")
    a = data_dir()
    assert a.is_relative_to(tmp_path / "cache" / "lens" / "work")
    monkeypatch.setenv("LENS_DATA_DIR", "s3://lens-bucket/other")
    assert data_dir() != a  # one working copy per location
    monkeypatch.setenv(objectstore.WORK_DIR_ENV, str(tmp_path / "w"))
    assert data_dir() == (tmp_path / "w").resolve()
    monkeypatch.setenv("LENS_DATA_DIR", str(tmp_path / "plain"))
    assert data_dir() == (tmp_path / "plain").resolve() and objectstore.store_for(tmp_path / "plain" / "x") is None


def test_a_failing_store_names_the_object_never_the_secret(bucket, monkeypatch):
    name, _ = bucket
    store = objectstore.store_from_url(f"s3://{name}-missing/lens")
    with pytest.raises(objectstore.ObjectStoreError) as e:
        store.put_bytes("x.json", b"{}")
    msg = str(e.value)
    assert msg.startswith(f"s3://{name}-missing/lens/x.json: PUT failed: NoSuchBucket"), msg
    assert SECRET not in msg and "lenstestkey" not in msg and "\n" not in msg


# ---------------------------------------------------------------------------------------------
# Commit points: raw runs, staging tables
# ---------------------------------------------------------------------------------------------
def _record(qid: str) -> dict:
    return {
        "run_id": "r1", "system": "base", "cfg_hash": "h", "qid": qid, "suite": "s", "intent": "nl",
        "language": "py", "req_ts": 1.0, "sla_ms": 150.0, "lat_ms": 3.0, "hits": [], "shards": [],
        "cost": {}, "error": None,
    }  # fmt: skip


def test_a_raw_run_is_in_the_bucket_when_its_writer_commits(bucket):
    from lens_core.collect.rawruns import RawRunWriter, raw_run_path

    name, client = bucket
    path = raw_run_path(data_dir(), "staging", "r1", "base")
    w = RawRunWriter(path)
    w.write(_record("q1"))
    assert _keys(client, name, "lens/runs/") == []  # nothing before the commit point
    info = w.commit()
    key = "lens/runs/staging/r1/base.ndjson"
    assert _keys(client, name, "lens/runs/") == [key]
    assert _body(client, name, key) == path.read_bytes()
    assert client.head_object(Bucket=name, Key=key)["Metadata"]["sha256"] == info["sha256"]
    aborted = RawRunWriter(raw_run_path(data_dir(), "staging", "r1", "other"))
    aborted.write(_record("q1"))
    aborted.abort()
    assert _keys(client, name, "lens/runs/") == [key]  # an aborted run never reaches the bucket


def test_a_staging_table_goes_to_the_bucket_and_comes_back_on_another_worker(bucket, tmp_path, monkeypatch):
    import dagster as dg

    from resources.io_manager import ParquetIOManager, staging_table_path

    name, client = bucket
    frame = pl.DataFrame({"x": [1, 2, 3]})

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["p1"]))
    def little_table() -> pl.DataFrame:
        return frame

    assert dg.materialize([little_table], partition_key="p1", resources={"io_manager": ParquetIOManager()}).success
    key = "lens/staging/little_table/p1.parquet"
    local = data_dir() / "staging" / "little_table" / "p1.parquet"
    assert key in _keys(client, name) and _body(client, name, key) == local.read_bytes()
    assert client.head_object(Bucket=name, Key=key)["Metadata"]["sha256"] == sha256_file(local)

    # another worker: a fresh working copy finds the table in the bucket
    monkeypatch.setenv(objectstore.WORK_DIR_ENV, str(tmp_path / "work2"))
    other = Path(staging_table_path("little_table", "p1").path)
    assert other.is_relative_to(tmp_path / "work2") and pl.read_parquet(other).equals(frame)

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["p1"]))
    def reader(little_table: pl.DataFrame) -> None:
        assert little_table.equals(frame)

    other.unlink()
    res = dg.materialize(
        [little_table.to_source_asset(), reader], partition_key="p1", resources={"io_manager": ParquetIOManager()}
    )
    assert res.success and other.is_file()  # the IO manager copied it back before loading

    # an object that does not match its recorded sha256 is refused, never read
    client.put_object(Bucket=name, Key=key, Body=b"not parquet", Metadata={"sha256": "0" * 64})
    other.unlink()
    with pytest.raises(objectstore.ObjectStoreError, match=r"sha256 .* != recorded .*\(refused\)"):
        staging_table_path("little_table", "p1")
    assert not other.exists()


# ---------------------------------------------------------------------------------------------
# Publication: manifest last, pointer by conditional write
# ---------------------------------------------------------------------------------------------
def _tiny_files(tmp_path: Path, tag: str) -> dict:
    f = tmp_path / f"hero-{tag}.csv"
    f.write_text(f"a\n{tag}\n")
    return {"hero_table": f}


GREEN = [GateResult("pool", 0.95, 0.9, True, True)]
HERO = BUNDLE_FILES["hero_table"]


def _assemble(d: Path, tmp_path: Path, tag: str, partition: str, now_ms: int):
    from lens_core.publish.bundle import assemble

    return assemble(
        d, _tiny_files(tmp_path, tag), [], {"s": tag}, GREEN, {"source": "sim"}, extra={"partition": partition},
        now_ms=now_ms,
    )  # fmt: skip


def _pointer(client, bucket: str) -> dict:
    return json.loads(_body(client, bucket, "lens/published.json"))


def test_bundle_objects_then_manifest_then_pointer(bucket, tmp_path, monkeypatch):
    name, client = bucket
    order: list[str] = []
    put_file, put_bytes = objectstore.S3Store.put_file, objectstore.S3Store.put_bytes

    def spy_file(self, local, rel, sha256=None):
        order.append(rel)
        return put_file(self, local, rel, sha256)

    def spy_bytes(self, rel, data, if_match=None, if_none_match=False):
        order.append(f"{rel} if_match={if_match} if_none_match={if_none_match}")
        return put_bytes(self, rel, data, if_match, if_none_match)

    monkeypatch.setattr(objectstore.S3Store, "put_file", spy_file)
    monkeypatch.setattr(objectstore.S3Store, "put_bytes", spy_bytes)
    a = _assemble(data_dir(), tmp_path, "a", "2026-11-22", 1000)
    fa = a.fingerprint
    assert order == [
        f"bundles/{fa}/{HERO}", f"bundles/{fa}/attestation.json", "published.json if_match=None if_none_match=True",
    ]  # fmt: skip
    etag = client.head_object(Bucket=name, Key="lens/published.json")["ETag"]
    order.clear()
    b = _assemble(data_dir(), tmp_path, "b", "2026-11-29", 2000)
    assert order[-1] == f"published.json if_match={etag} if_none_match=False"
    ptr = _pointer(client, name)
    assert ptr["fingerprint"] == b.fingerprint and ptr["previous"] == fa and ptr["bundle"] == f"bundles/{b.fingerprint}"
    # the bucket's pointer is the working copy's, byte for byte
    assert _body(client, name, "lens/published.json") == (data_dir() / "published.json").read_bytes()


def test_a_publisher_losing_the_conditional_write_decides_again(bucket, tmp_path, monkeypatch):
    """Two machines (two working copies, one bucket). Machine A reads the pointer, then B
    publishes a newer week before A's conditional write lands: A's write is refused (412), A
    re-reads, finds the newer week and refuses its own as older; the bucket keeps B's pointer and
    A's working copy follows it. Then B's same-week rival races A again: A retries and wins with
    `previous` naming the pointer it replaced, so no publication is lost."""
    from lens_core.publish.bundle import read_published

    name, client = bucket
    first = _assemble(data_dir(), tmp_path, "first", "2026-11-15", 1000)
    a_dir, b_dir = data_dir(), tmp_path / "work_b"
    real_put = objectstore.S3Store.put_bytes
    rivals: list = []

    def rival_publishes_first(partition: str, now_ms: int):
        def put(self, rel, data, if_match=None, if_none_match=False):
            if rel == "published.json" and not rivals:  # once: B publishes between A's read and write
                monkeypatch.setattr(objectstore.S3Store, "put_bytes", real_put)
                monkeypatch.setenv(objectstore.WORK_DIR_ENV, str(b_dir))
                try:
                    rivals.append(_assemble(b_dir, tmp_path, f"b{now_ms}", partition, now_ms))
                finally:
                    monkeypatch.setenv(objectstore.WORK_DIR_ENV, str(a_dir))
                    monkeypatch.setattr(objectstore.S3Store, "put_bytes", put)
            return real_put(self, rel, data, if_match, if_none_match)

        monkeypatch.setattr(objectstore.S3Store, "put_bytes", put)

    rival_publishes_first("2026-11-29", 3000)
    a = _assemble(a_dir, tmp_path, "a", "2026-11-22", 2000)
    (b,) = rivals
    assert b.published and b.previous_published == first.fingerprint
    assert not a.published and "older than the published 2026-11-29" in a.refused_older
    assert _pointer(client, name)["fingerprint"] == b.fingerprint  # A did not overwrite B
    assert read_published(a_dir)["fingerprint"] == b.fingerprint
    local = json.loads((a_dir / "published.json").read_text())
    assert local["fingerprint"] == b.fingerprint and (a_dir / "bundles" / b.fingerprint / "attestation.json").is_file()
    assert (a_dir / "site" / "published.json").resolve().read_text() == (a_dir / "published.json").read_text()

    rivals.clear()
    rival_publishes_first("2026-12-06", 5000)
    a2 = _assemble(a_dir, tmp_path, "a2", "2026-12-06", 4000)
    (b2,) = rivals
    assert b2.published and a2.published
    ptr = _pointer(client, name)
    assert ptr["fingerprint"] == a2.fingerprint and ptr["previous"] == b2.fingerprint  # B2 not lost: A2 follows it


def test_a_publisher_that_always_loses_gives_up_in_one_line(bucket, tmp_path, monkeypatch):
    from lens_core.publish import bundle

    name, client = bucket
    first = _assemble(data_dir(), tmp_path, "first", "2026-11-22", 1000)
    real_put = objectstore.S3Store.put_bytes
    tries = []

    def always_moved(self, rel, data, if_match=None, if_none_match=False):
        if rel == "published.json":
            tries.append(if_match)
            again = {**_pointer(client, name), "rewritten": len(tries)}  # someone rewrites it each time
            real_put(self, rel, json.dumps(again).encode())
        return real_put(self, rel, data, if_match, if_none_match)

    monkeypatch.setattr(objectstore.S3Store, "put_bytes", always_moved)
    with pytest.raises(bundle.PublishConflict) as e:
        _assemble(data_dir(), tmp_path, "b", "2026-11-29", 2000)
    assert len(tries) == bundle.PUBLISH_ATTEMPTS and "uploaded but not published" in str(e.value)
    assert _pointer(client, name)["fingerprint"] == first.fingerprint
    assert json.loads((data_dir() / "published.json").read_text())["fingerprint"] == first.fingerprint


def test_a_crash_between_objects_and_manifest_leaves_the_previous_bundle_published(bucket, tmp_path, monkeypatch):
    name, client = bucket
    first = _assemble(data_dir(), tmp_path, "first", "2026-11-22", 1000)
    real_put = objectstore.S3Store.put_file

    def crash_at_manifest(self, local, rel, sha256=None):
        if rel.endswith("/attestation.json"):
            raise KeyboardInterrupt("killed between the objects and the manifest")
        return real_put(self, local, rel, sha256)

    monkeypatch.setattr(objectstore.S3Store, "put_file", crash_at_manifest)
    with pytest.raises(KeyboardInterrupt):
        _assemble(data_dir(), tmp_path, "second", "2026-11-29", 2000)
    monkeypatch.setattr(objectstore.S3Store, "put_file", real_put)
    assert _pointer(client, name)["fingerprint"] == first.fingerprint
    (second,) = [d.name for d in (data_dir() / "bundles").iterdir() if d.name != first.fingerprint]
    objs = _keys(client, name, f"lens/bundles/{second}/")
    assert objs == [f"lens/bundles/{second}/{HERO}"]  # objects without their manifest
    out = _cli("verify", f"s3://{name}/lens/bundles/{second}")
    assert out.returncode == 1 and f"s3://{name}/lens/bundles/{second}/attestation.json: missing attestation" in (
        out.stderr
    ), out.stderr


def _cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lens_cli", *args], cwd=REPO, env=env or dict(os.environ),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_run_refuses_a_bad_or_unreachable_bucket_before_it_starts(bucket, tmp_path):
    name, _ = bucket
    env = {**os.environ, "DAGSTER_HOME": str(new_dagster_home(tmp_path / "home"))}
    out = _cli("run", "--source", "sim", "--data-dir", "s3://Bad_Bucket/x", env=env)
    assert out.returncode == 2 and "not a valid S3 bucket name" in out.stderr, out.stderr
    assert out.stderr.strip().count("\n") == 0
    out = _cli("run", "--source", "sim", "--data-dir", f"s3://{name}-absent/x", env=env)
    assert out.returncode == 1 and f"s3://{name}-absent/x: HEAD bucket failed: NoSuchBucket" in out.stderr, out.stderr
    assert out.stderr.strip().count("\n") == 0 and SECRET not in out.stderr + out.stdout
    assert not (tmp_path / "work").exists()  # nothing written


def test_verify_refuses_a_bad_url_in_one_line(bucket):
    out = _cli("verify", "s3://Not_A_Bucket/x")
    assert out.returncode != 0 and out.stderr.strip().count("\n") == 0 and "not a valid S3 bucket name" in out.stderr
    name, _ = bucket
    out = _cli("verify", f"s3://{name}/nothing-here")
    assert out.returncode != 0 and "no published.json" in out.stderr and out.stderr.strip().count("\n") == 0


# ---------------------------------------------------------------------------------------------
# One weekly partition with the data dir in the bucket
# ---------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_weekly_partition_with_the_data_dir_in_s3(s3_server, tmp_path):
    import boto3

    bucket_name = f"lens-e2e-{secrets.token_hex(4)}"
    client = boto3.client(
        "s3", endpoint_url=s3_server, aws_access_key_id="lenstestkey", aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )  # fmt: skip
    client.create_bucket(Bucket=bucket_name)
    url = f"s3://{bucket_name}/weekly"
    work, home = tmp_path / "work", new_dagster_home(tmp_path / "dagster_home")
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_SOURCE", "LENS_CONFIG", "AWS_PROFILE")}
    env.update(_aws_env(s3_server), LENS_DATA_DIR=url, LENS_WORK_DIR=str(work), DAGSTER_HOME=str(home))
    env["LENS_MAX_CONCURRENT_STEPS"] = "2"
    t0 = time.monotonic()
    run = _cli(
        "run", "--source", "sim", "--partition", PARTITION, "--queries-per-suite", str(QUERIES_PER_SUITE),
        env=env, timeout=1500,
    )  # fmt: skip
    wall = time.monotonic() - t0
    out = run.stdout + run.stderr
    log = work / "logs" / "code_server.log"
    logs = log.read_text(errors="replace") if log.is_file() else ""
    assert run.returncode == 0, (
        f"lens-eval run exited {run.returncode} after {wall:.0f}s:\n{out[-4000:]}\n{logs[-3000:]}"
    )
    print(f"weekly partition with LENS_DATA_DIR={url}: {wall:.0f}s")

    keys = _keys(client, bucket_name, "weekly/")
    ptr = json.loads(_body(client, bucket_name, "weekly/published.json"))
    fp = ptr["fingerprint"]
    att = json.loads(_body(client, bucket_name, f"weekly/bundles/{fp}/attestation.json"))
    # raw runs: every attested one is in the bucket, as attested
    assert att["raw_runs"] and all(r.startswith("runs/") for r in att["raw_runs"])
    for rel, sha in att["raw_runs"].items():
        assert client.head_object(Bucket=bucket_name, Key=f"weekly/{rel}")["Metadata"]["sha256"] == sha
    # staging tables, written by the step processes through the IO manager
    staged = {k.split("/")[2] for k in keys if k.startswith("weekly/staging/") and k.endswith(f"/{PARTITION}.parquet")}
    assert {"query_suites", "raw_runs", "agg", "hits", "pool", "qrels", "per_query", "scores"} <= staged, staged
    # the bundle: every artifact, and its manifest
    bundle_keys = {k[len(f"weekly/bundles/{fp}/") :] for k in keys if k.startswith(f"weekly/bundles/{fp}/")}
    assert bundle_keys == {*att["artifacts"], "attestation.json"}, bundle_keys ^ {*att["artifacts"], "attestation.json"}
    assert ptr["bundle"] == f"bundles/{fp}" and ptr["partition"] == PARTITION
    # no secret anywhere: the run's output, its logs, the attestation, the pointer, the Dagster event log
    event_db = "".join(p.read_text(errors="replace") for p in home.rglob("*.db") if p.is_file())
    for where, text in {"output": out, "logs": logs, "attestation": json.dumps(att), "events": event_db}.items():
        assert SECRET not in text, f"the AWS secret key appears in the {where}"

    # verify from the bucket alone: the working copy is gone
    shutil.rmtree(work)
    venv = {k: v for k, v in env.items() if k not in ("LENS_DATA_DIR", "LENS_WORK_DIR")}
    ok = _cli("verify", url, env=venv)
    assert ok.returncode == 0 and ok.stdout.startswith(f"OK {fp}:"), ok.stdout + ok.stderr
    assert _cli("verify", f"{url}/bundles/{fp}", env=venv).returncode == 0
    assert not work.exists()

    # a tampered object in the bucket fails verify, naming it
    victim = next(a for a in sorted(att["artifacts"]) if a.endswith(".csv"))
    body = _body(client, bucket_name, f"weekly/bundles/{fp}/{victim}")
    client.put_object(Bucket=bucket_name, Key=f"weekly/bundles/{fp}/{victim}", Body=body + b"\n")
    bad = _cli("verify", url, env=venv)
    assert bad.returncode == 1 and re.search(rf"FAIL {re.escape(victim)}: sha256 \w+… != attested", bad.stderr), (
        bad.stderr
    )
    client.put_object(Bucket=bucket_name, Key=f"weekly/bundles/{fp}/{victim}", Body=body)
    raw = sorted(att["raw_runs"])[0]
    client.put_object(Bucket=bucket_name, Key=f"weekly/{raw}", Body=b'{"type":"done","records":0}\n')
    bad = _cli("verify", url, env=venv)
    assert bad.returncode == 1 and f"FAIL {raw}: raw run sha256" in bad.stderr, bad.stderr
