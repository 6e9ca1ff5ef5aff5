"""Attestation, publish-on-green / keep-last-green, and verify catching tampering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from lens_core.common.hashing import fingerprint
from lens_core.decide.gates import GateResult
from lens_core.publish.bundle import assemble, attested_facts, read_published, verify
from tests.conftest import own_dirs


@pytest.fixture(scope="module")
def green_bundle(tmp_path_factory):
    """One real bundle from the simulator chain, reused (copied) by the tests."""
    d = tmp_path_factory.mktemp("bundle_data")
    with own_dirs(d, tmp_path_factory.mktemp("bundle_dagster_home")):
        from lens_assets.run import run_weekly

        res = run_weekly("2026-11-08", queries_per_suite=30)
    assert res["success"]
    return d, Path(res["bundle"])


def _copy(green_bundle, tmp_path) -> Path:
    d, b = green_bundle
    dst = tmp_path / "data"
    shutil.copytree(d, dst)
    return dst / "bundles" / b.name


def test_fingerprint_format():
    assert fingerprint("abcdef0123456789", 1757345166574) == "v22_abcdef01_1757345166574"


def test_verify_passes_on_untouched_bundle(green_bundle, tmp_path):
    assert verify(_copy(green_bundle, tmp_path)) == []


def test_verify_catches_a_flipped_byte(green_bundle, tmp_path):
    b = _copy(green_bundle, tmp_path)
    p = b / "hits.parquet"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    problems = verify(b)
    assert any("hits.parquet" in x and "sha256" in x for x in problems)


def test_verify_catches_a_changed_score_even_with_rehashed_attestation(green_bundle, tmp_path):
    b = _copy(green_bundle, tmp_path)
    hero = pl.read_csv(b / "tables/hero_span_v22.csv")
    hero = hero.with_columns(
        pl.when(pl.col("system") == "lens_v22")
        .then(pl.col("ndcg_10") + 0.01)
        .otherwise(pl.col("ndcg_10"))
        .alias("ndcg_10")
    )
    hero.write_csv(b / "tables/hero_span_v22.csv")
    assert any("hero_span_v22.csv" in x for x in verify(b))
    # A forger who also rewrites the attestation's hash breaks the content hash instead.
    att = json.loads((b / "attestation.json").read_text())
    from lens_core.common.hashing import sha256_file

    att["artifacts"]["tables/hero_span_v22.csv"] = sha256_file(b / "tables/hero_span_v22.csv")
    (b / "attestation.json").write_text(json.dumps(att))
    problems = verify(b)
    assert any("content hash" in x for x in problems)


def test_verify_rescoring_catches_consistent_forgery(green_bundle, tmp_path):
    """Everything re-hashed consistently, but the numbers no longer follow from agg/hits/qrels."""
    from lens_core.common.hashing import content_hash, sha256_file

    b = _copy(green_bundle, tmp_path)
    hero = pl.read_csv(b / "tables/hero_span_v22.csv")
    hero.with_columns(pl.col("ndcg_10") + 0.02).write_csv(b / "tables/hero_span_v22.csv")
    att = json.loads((b / "attestation.json").read_text())
    att["artifacts"]["tables/hero_span_v22.csv"] = sha256_file(b / "tables/hero_span_v22.csv")
    csha = content_hash(att["artifacts"], attested_facts(att))
    att["content_sha256"] = csha
    new_fp = f"v22_{csha[:8]}_{att['created_ms']}"
    att["fingerprint"] = new_fp
    (b / "attestation.json").write_text(json.dumps(att))
    nb = b.parent / new_fp
    b.rename(nb)
    problems = verify(nb)
    assert problems and all("re-scored" in x for x in problems)


def _tiny_files(tmp_path) -> dict:
    f = tmp_path / "t.csv"
    f.write_text("a\n1\n")
    return {"hero_table": f}


def _gate(passed: bool) -> GateResult:
    return GateResult("pool", 0.95 if passed else 0.5, 0.9, True, passed)


def test_publish_on_green_and_keep_last_green(tmp_path):
    d = tmp_path / "data"
    g = assemble(d, _tiny_files(tmp_path), [], {"s": "x"}, [_gate(True)], {"source": "sim"}, now_ms=1)
    assert g.published and read_published(d)["fingerprint"] == g.fingerprint
    r = assemble(d, _tiny_files(tmp_path), [], {"s": "x"}, [_gate(False)], {"source": "sim"}, now_ms=2)
    assert not r.published and r.failed_blocking == ["pool"]
    assert read_published(d)["fingerprint"] == g.fingerprint  # last green stays
    assert (d / "bundles" / r.fingerprint / "attestation.json").is_file()  # red bundle kept for review
    nonblocking = GateResult("tail", 3.0, 2.0, False, False)
    g2 = assemble(d, _tiny_files(tmp_path), [], {"s": "x"}, [_gate(True), nonblocking], {"source": "sim"}, now_ms=3)
    assert g2.published and read_published(d)["previous"] == g.fingerprint


def test_concurrent_publications_leave_one_consistent_pointer(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    d = tmp_path / "data"
    with ThreadPoolExecutor(4) as ex:
        results = list(
            ex.map(
                lambda i: assemble(
                    d, _tiny_files(tmp_path), [], {"s": str(i)}, [_gate(True)], {"source": "sim"}, now_ms=100 + i
                ),
                range(8),
            )
        )
    pub = read_published(d)
    assert pub["fingerprint"] in {r.fingerprint for r in results}
    assert (d / pub["bundle"] / "attestation.json").is_file()
    assert not list((d / "bundles").glob(".tmp-*"))
