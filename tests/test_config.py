"""The Lens config: every section is declared, unknown keys are errors naming the key and the
file, owners come from config only."""

from __future__ import annotations

from dataclasses import fields

import pytest

from lens_core.common import settings


def test_packaged_config_loads():
    cfg = settings.load_config()
    assert cfg.gates["pool"].threshold == 0.9 and cfg.gates["pool"].blocking
    assert cfg.gates["parity"].threshold == 0 and isinstance(cfg.gates["parity"].threshold, int)
    assert cfg.promotion["router_pack_b"].primary.needed == 0.01
    assert cfg.sanity.queries == 30 and cfg.calibration.min_labels == 2000 and cfg.stats.min_n == 10
    assert cfg.load_test.rates == (10, 20, 40, 80) and cfg.monitoring.micro_suite_size == 800
    assert cfg.run.ci_b == 2000 and cfg.run.perm_b == 10000


def test_bootstrap_floors(lens_config):
    lens_config("run: {bootstrap_b: 500, randomisation_b: 20000}\n")
    run = settings.load_config().run
    assert run.ci_b == 2000 and run.perm_b == 20000
    lens_config("run: {bootstrap_b: 500, bootstrap_b_min: 100}\n")
    assert settings.load_config().run.ci_b == 500


def test_unknown_top_level_key_is_refused(lens_config):
    path = lens_config("gatez:\n  pool: {threshold: 1.01}\n")
    with pytest.raises(ValueError, match="gatez") as err:
        settings.load_config()
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "text, key",
    [
        ("gates:\n  pool: {threshhold: 1.01}\n", "gates.pool.threshhold"),
        ("run: {bootstrap_bb: 3000}\n", "run.bootstrap_bb"),
        ("canary: {ladderr: [5, 100]}\n", "canary.ladderr"),
        ("load_test: {querys: 10}\n", "load_test.querys"),
        (
            "promotion:\n  ann_pack_c:\n    rules:\n      - {kind: delta, metric: ndcg_10, slice: all, mn: 0.0}\n",
            "promotion.ann_pack_c.rules.0.mn",
        ),
    ],
)
def test_unknown_nested_key_is_refused(lens_config, text, key):
    path = lens_config(text)
    with pytest.raises(ValueError, match="unknown key") as err:
        settings.load_config()
    assert f"`{key}`" in str(err.value) and str(path) in str(err.value)


def test_override_merges_and_keeps_the_rest(lens_config):
    lens_config("gates:\n  ece: {blocking: false}\n")
    gates = settings.load_config().gates
    assert gates["ece"].blocking is False and gates["ece"].threshold == 0.02
    assert gates["ece"].owner == "team:ml-calibration"


def test_canary_keys_match_the_canary_config():
    from lens_core.decide.canary import CanaryConfig, canary_config

    assert set(settings.CanarySpec.model_fields) == {f.name for f in fields(CanaryConfig)}
    cfg = canary_config()
    assert cfg.window_queries == 80 and cfg.ladder == (5, 25, 50, 100)
    assert cfg.aa_pct == CanaryConfig().aa_pct  # unset in the YAML: the dataclass default


def test_owners():
    assert settings.owners("eval") == ["team:search-eval"]
    assert settings.owners("core") == ["team:search-core"]
    assert settings.owners("calibration") == ["team:ml-calibration"]
    assert settings.owners("lvm") == ["team:ml-lvm"]
    with pytest.raises(KeyError, match="nope.*known: calibration, core, eval, lvm"):
        settings.owners("nope")
    settings.owners("eval").append("x")  # a copy: callers cannot change the config
    assert settings.owners("eval") == ["team:search-eval"]


def test_owners_come_from_the_config(lens_config):
    lens_config("owners:\n  eval: ['team:other']\n")
    assert settings.owners("eval") == ["team:other"]
    assert settings.owners("core") == ["team:search-core"]
