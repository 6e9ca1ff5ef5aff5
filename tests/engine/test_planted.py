"""The planted knobs of issue 17 (docs/spec_notes/issue17-planted.md): the exact-definition
fusion weight (improvement), the structural arm switch and the dropped top lexical hit
(regressions). Each test checks the mechanism itself on the small test corpus."""

from __future__ import annotations

import polars as pl
import pytest

from lens_core.common.systems import OPTIONAL_KNOBS, SystemConfig
from lens_engine.engine import ARM_WEIGHTS, code_like, names_code


def _hits(eng, q, system, k=10, arms=None):
    lines = list(eng.search(q, k, system, 5000.0, debug=True, arms=arms))
    return lines[:-1], lines[-1]


def _spans(hits):
    return [(h["path"], h["start_line"]) for h in hits]


def _gt(suites, intent):
    q, g = suites
    q = q.filter(pl.col("intent") == intent)
    rel: dict[str, set] = {}
    for r in g.iter_rows(named=True):
        rel.setdefault(r["qid"], set()).add((r["path"], r["start_line"]))
    return [(t, rel[qid]) for qid, t in zip(q["qid"], q["text"])]


def _first_rank(hits, rel):
    return next((i + 1 for i, s in enumerate(_spans(hits)) if s in rel), 10**6)


def test_optional_knobs_keep_existing_hashes(base):
    assert base.knobs().keys().isdisjoint(OPTIONAL_KNOBS)  # defaults are not hashed
    same = base.model_copy(update={"exact_def_weight": 0.5, "struct_arm": True, "lex_drop_top": False})
    assert same.cfg_hash == base.cfg_hash
    for knob, value in (("exact_def_weight", 2.0), ("struct_arm", False), ("lex_drop_top", True)):
        v = base.model_copy(update={knob: value})
        assert v.cfg_hash != base.cfg_hash and v.knobs()[knob] == value


def test_names_code_is_narrower_than_code_like():
    for q in ("read_file", "getHTTPResponse", "parse", "map_table_b3", "read_file write_file"):
        assert names_code(q) and code_like(q), q
    # a sentence that mentions an identifier is code-like (router) but does not *name* code
    for q in ("Return the value of read_file for a path", "Close the socket"):
        assert not names_code(q), q
    assert code_like("Return the value of read_file for a path")


def test_exact_definition_weight_applies_only_to_code_queries_with_a_definition(engine, suites, base):
    ed = base.model_copy(update={"exact_def_weight": 2.0, "name": "ed"})
    ident = _gt(suites, "identifier")[0][0]
    plan = engine.plan(ident, 10, ed)
    st = engine._merge([engine._struct_shard(s, plan) for s in range(engine.index.n_shards)], 50)
    assert engine.exact_definition(plan, st)
    assert engine.index.units[int(st[0][0])].name == ident  # the arm's top hit defines it
    assert engine.struct_weight(plan, st) == 2.0
    assert engine.struct_weight(engine.plan(ident, 10, base), st) == ARM_WEIGHTS["struct"]
    # a sentence mentioning the identifier, and a structural template, keep their weights
    sent = f"Return the result of {ident} for the given value"
    p2 = engine.plan(sent, 10, ed)
    st2 = engine._merge([engine._struct_shard(s, p2) for s in range(engine.index.n_shards)], 50)
    assert engine.struct_weight(p2, st2) == ARM_WEIGHTS["struct"]
    p3 = engine.plan(f"functions that call {ident}", 10, ed)
    assert engine.struct_weight(p3, st) == ARM_WEIGHTS["struct_template"]


def test_exact_definition_weight_lifts_definitions_over_mentions(engine, suites, base):
    """On the identifier suite the defined function moves up where a caller out-scored it
    lexically, and no query gets worse; NL queries are untouched."""
    ed = base.model_copy(update={"exact_def_weight": 2.0, "name": "ed"})
    better = worse = 0
    for text, rel in _gt(suites, "identifier"):
        rb = _first_rank(_hits(engine, text, base)[0], rel)
        re_ = _first_rank(_hits(engine, text, ed)[0], rel)
        better += re_ < rb
        worse += re_ > rb
    assert worse == 0 and better >= 1, (better, worse)
    for text, _ in _gt(suites, "nl")[:15]:
        assert _spans(_hits(engine, text, ed)[0]) == _spans(_hits(engine, text, base)[0])


def test_struct_arm_off_drops_the_structural_arm(engine, suites, base):
    off = base.model_copy(update={"struct_arm": False, "name": "off"})
    q, _ = suites
    structural = _gt(suites, "structural")
    assert structural
    lost = 0
    for text, rel in structural:
        hits_off, done_off = _hits(engine, text, off)
        hits_on, done_on = _hits(engine, text, base)
        assert all("struct" not in h["why"] for h in hits_off)
        assert done_off["router"]["confidence"] <= done_on["router"]["confidence"] + 1e-9
        lost += _first_rank(hits_off, rel) > _first_rank(hits_on, rel)
    assert lost >= len(structural) // 3, (lost, len(structural))
    # asked for explicitly, the structural arm of a system that has it off stays empty
    hits, _ = _hits(engine, structural[0][0], off, arms=frozenset({"struct", "lex"}))
    assert all(h["why"] == ["lex"] for h in hits)


def test_lex_drop_top_loses_exactly_the_best_lexical_hit(engine, suites, base):
    bug = base.model_copy(update={"lex_drop_top": True, "name": "bug"})
    lex = frozenset({"lex"})
    for text, _ in _gt(suites, "nl")[:10]:
        good = _spans(_hits(engine, text, base, k=20, arms=lex)[0])
        bad = _spans(_hits(engine, text, bug, k=20, arms=lex)[0])
        assert bad[:19] == good[1:] and good[0] not in bad
    # fused: the best lexical hit of an NL query is usually its answer, now often gone
    lost = sum(
        _first_rank(_hits(engine, t, bug)[0], rel) > _first_rank(_hits(engine, t, base)[0], rel)
        for t, rel in _gt(suites, "nl")[:30]
    )
    assert lost >= 5


@pytest.mark.parametrize("knob,value", [("exact_def_weight", 2.0), ("struct_arm", False), ("lex_drop_top", True)])
def test_engine_reports_the_variant_cfg_hash(engine, base, knob, value):
    v = SystemConfig(**{**base.model_dump(), knob: value, "name": "v"})
    _, done = _hits(engine, "read_file", v)
    assert done["cfg_hash"] == v.cfg_hash != base.cfg_hash
