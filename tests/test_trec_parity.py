"""Parity of `lens-eval trec`'s measures with pytrec_eval (trec_eval 9.x inside) to 1e-9, per
query, on every measure both support: tied and tie-free runs, numeric and textual docnos,
relevance thresholds 1 and 2, doc credit and span credit (the span credit checked against a
plain-Python reading of SPEC §4, then scored by pytrec_eval as doc-level files)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

pytrec_eval = pytest.importorskip("pytrec_eval")

from lens_core.measures.registry import FAMILIES, Measure, family_measures  # noqa: E402
from lens_core.measures.trec import compute, evaluate_input, load  # noqa: E402

# families pytrec_eval (trec_eval 9.x) computes, with lens's parameters for each
PYTREC_FAMILIES = [
    "num_ret",
    "num_rel",
    "num_rel_ret",
    "map",
    "gm_map",
    "Rprec",
    "bpref",
    "recip_rank",
    "iprec_at_recall",
    "P",
    "recall",
    "gm_bpref",
    "ndcg",
    "ndcg_cut",
    "map_cut",
    "success",
    "set_P",
    "set_recall",
    "set_map",
    "set_F",
    "num_nonrel_judged_ret",
]


def _docno(rng: random.Random) -> str:
    return rng.choice([str(rng.randint(1, 120)), f"D{rng.randint(1, 120)}", f"FR94-{rng.randint(1, 60):03d}"])


def _files(tmp_path: Path, seed: int, tied: bool) -> tuple[Path, Path, dict, dict]:
    rng = random.Random(seed)
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(60):
        qid = str(q * 7 % 61)  # numeric qids: strcmp order differs from numeric order
        pool = {_docno(rng) for _ in range(rng.randint(0, 60))}
        if rng.random() < 0.9:
            judged = [d for d in pool if rng.random() < 0.6]
            grades = [0, 0, 1, 2, 3] if rng.random() < 0.8 else [0]
            qrels[qid] = {d: rng.choice(grades) for d in judged}
            if not qrels[qid]:
                qrels[qid] = {"only": 0}
        if rng.random() < 0.9:
            docs = [d for d in pool if rng.random() < 0.8]
            run[qid] = {d: (round(rng.random(), 1) if tied else rng.random() + q) for d in docs}
            if not run[qid]:
                del run[qid]
    qp = tmp_path / f"qrels{seed}"
    rp = tmp_path / f"run{seed}"
    qp.write_text("".join(f"{q} 0 {d} {g}\n" for q, ds in qrels.items() for d, g in ds.items()))
    lines = [f"{q} Q0 {d} {i + 1} {s!r} tag\n" for q, ds in run.items() for i, (d, s) in enumerate(ds.items())]
    rng.shuffle(lines)
    rp.write_text("".join(lines))
    return qp, rp, qrels, run


def _compare(lens: dict[Measure, np.ndarray], qids: list[str], ref: dict[str, dict[str, float]], level: int) -> int:
    checked = 0
    assert sorted(ref) == sorted(qids)  # the same query set
    for m, values in lens.items():
        key = m.trec_name
        for i, q in enumerate(qids):
            want = ref[q][key]
            assert values[i] == pytest.approx(want, abs=1e-9, rel=0), (m.trec_name, q, level)
            checked += 1
    return checked


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("level", [1, 2])
def test_doc_credit_parity_with_pytrec_eval(tmp_path, tied, level):
    qp, rp, qrels, run = _files(tmp_path, seed=11 + level + 2 * tied, tied=tied)
    r = evaluate_input(load(qp, rp))
    measures = [m for f in PYTREC_FAMILIES for m in family_measures(f)]
    lens = compute(r, measures, level=level, convention="v9")
    ev = pytrec_eval.RelevanceEvaluator(qrels, set(PYTREC_FAMILIES), relevance_level=level)
    ref = ev.evaluate(run)
    n = _compare(lens, r.qids, ref, level)
    assert n > 1000 and r.nq > 30
    if tied:  # the ties are real: many tied scores within a query
        assert any(len(set(ds.values())) < len(ds) for ds in run.values())


def test_judged_and_unj_against_their_definitions(tmp_path):
    qp, rp, qrels, run = _files(tmp_path, seed=5, tied=True)
    r = evaluate_input(load(qp, rp))
    got = compute(r, [Measure("judged", 10), Measure("unj", 5), Measure("unj", 20)])
    for i, q in enumerate(r.qids):
        ranking = sorted(run[q].items(), key=lambda kv: (-kv[1], [-b for b in kv[0].encode()] + [1]))
        top = [d for d, _ in ranking]
        judged10 = sum(d in qrels[q] for d in top[:10])
        assert got[Measure("judged", 10)][i] == pytest.approx(judged10 / min(10, len(top)) if top else 0.0)
        for k in (5, 20):
            assert got[Measure("unj", k)][i] == pytest.approx(sum(d not in qrels[q] for d in top[:k]) / k)


# ----------------------------------------------------------------------------------------------
# span credit: a plain reading of SPEC §4, scored by pytrec_eval as doc-level files
# ----------------------------------------------------------------------------------------------
def _span_files(tmp_path: Path, seed: int):
    rng = random.Random(seed)
    spans: dict[str, dict[tuple, int]] = {}
    hits: dict[str, list[tuple[tuple, float]]] = {}
    for q in range(40):
        qid = f"q{q}"
        files = [("r", f"f{i}.py") for i in range(4)]
        sp: dict[tuple, int] = {}
        for _ in range(rng.randint(1, 8)):
            repo, path = rng.choice(files)
            s = rng.randint(1, 80)
            sp[(repo, path, s, s + rng.randint(0, 15))] = rng.choice([0, 1, 2, 3])
        spans[qid] = sp
        hs: dict[tuple, float] = {}
        for _ in range(rng.randint(1, 25)):
            if rng.random() < 0.4:  # near a judged span
                repo, path, s, e = rng.choice(list(sp))
                s2, e2 = max(1, s + rng.randint(-3, 3)), e + rng.randint(-3, 3)
                key = (repo, path, min(s2, e2), max(s2, e2))
            else:
                repo, path = rng.choice(files)
                s = rng.randint(1, 90)
                key = (repo, path, s, s + rng.randint(0, 20))
            hs[key] = round(rng.random(), 1)  # tied scores
        hits[qid] = list(hs.items())
    return spans, hits


def _credits(qspans: dict[tuple, int], ranking: list[tuple]) -> list[int | None]:
    """SPEC §4, read plainly: in rank order, a hit earns the highest grade among the relevant
    spans (same repo and path; inside, or line IoU >= 0.5) not yet credited; None: no credit."""
    taken: set[tuple] = set()
    out: list[int | None] = []
    for repo, path, s, e in ranking:
        best = None
        for span, g in sorted(qspans.items()):
            if g <= 0 or span in taken or span[:2] != (repo, path):
                continue
            inter = max(0, min(e, span[3]) - max(s, span[2]) + 1)
            union = (e - s + 1) + (span[3] - span[2] + 1) - inter
            if (s >= span[2] and e <= span[3]) or 2 * inter >= union:
                if best is None or g > qspans[best]:
                    best = span
        if best is not None:
            taken.add(best)
        out.append(None if best is None else qspans[best])
    return out


def test_span_credit_parity_with_pytrec_eval(tmp_path):
    spans, hits = _span_files(tmp_path, seed=3)
    doc = lambda k: f"{k[0]}:{k[1]}:{k[2]}-{k[3]}"  # noqa: E731
    order = lambda kv: (-kv[1], [-b for b in doc(kv[0]).encode()] + [1])  # noqa: E731 trec_eval's order
    for q, hs in hits.items():
        # a hit equal to a relevant span that an earlier hit took is judged non-relevant by
        # lens, a case with no doc-level counterpart: such hits are left out of the files
        ranking = sorted(hs, key=order)
        credit = _credits(spans[q], [k for k, _ in ranking])
        hits[q] = [(k, s) for (k, s), g in zip(ranking, credit) if not (g is None and spans[q].get(k, 0) > 0)]
    qp, rp = tmp_path / "q", tmp_path / "r"
    qp.write_text("".join(f"{q} 0 {doc(k)} {g}\n" for q, sp in spans.items() for k, g in sp.items()))
    rp.write_text("".join(f"{q} Q0 {doc(k)} 0 {s!r} t\n" for q, hs in hits.items() for k, s in hs))
    # the doc-level files pytrec_eval scores: a credited hit is its span, any other hit is its
    # own docno (judged non-relevant when it is a judged span, as lens counts it)
    ref_run: dict[str, dict[str, float]] = {}
    ref_qrels: dict[str, dict[str, int]] = {q: {} for q in spans}
    for q, hs in hits.items():
        ranking = sorted(hs, key=order)
        credit = _credits(spans[q], [k for k, _ in ranking])
        ref_run[q] = {}
        credited = set()
        for (k, score), g in zip(ranking, credit):
            if g is not None:
                best = next(
                    sp for sp, gg in sorted(spans[q].items()) if gg == g and sp not in credited and _earns(k, sp)
                )
                credited.add(best)
                name = "S:" + doc(best)
            else:
                name = ("S:" if k in spans[q] else "H:") + doc(k)  # a judged span: graded <= 0 here
            ref_run[q][name] = score
        for sp, g in spans[q].items():
            ref_qrels[q].setdefault("S:" + doc(sp), g)
    r = evaluate_input(load(qp, rp), credit="span")
    measures = [m for f in PYTREC_FAMILIES for m in family_measures(f)]
    lens = compute(r, measures, convention="v9")
    # the reference's rankings must be lens's: hits keep their scores, only names change,
    # and names could reorder ties; rank order is pinned by distinct scores per position
    for q in ref_run:
        ref_run[q] = {d: -i for i, d in enumerate(ref_run[q])}
    ref = pytrec_eval.RelevanceEvaluator(ref_qrels, set(PYTREC_FAMILIES)).evaluate(ref_run)
    assert _compare(lens, r.qids, ref, 1) > 1000
    assert sum(int(v) for v in compute(r, [Measure("num_rel_ret")])[Measure("num_rel_ret")]) > 20


def _earns(k: tuple, span: tuple) -> bool:
    if k[:2] != span[:2]:
        return False
    inter = max(0, min(k[3], span[3]) - max(k[2], span[2]) + 1)
    union = (k[3] - k[2] + 1) + (span[3] - span[2] + 1) - inter
    return (k[2] >= span[2] and k[3] <= span[3]) or 2 * inter >= union


def test_every_trec_family_has_a_parity_or_definition_test():
    tested = set(PYTREC_FAMILIES) | {"judged", "unj", "num_q"}
    assert set(FAMILIES) == tested
    assert math.isclose(0.5, 0.5)


@pytest.mark.parametrize("seed", [1, 2])
def test_fast_reader_gives_the_general_readers_values(tmp_path, seed):
    from lens_core.measures.registry import parse_measures
    from lens_core.measures.trec import FastRun

    qp, rp, _, _ = _files(tmp_path, seed=seed, tied=False)
    assert not isinstance(load(qp, rp, fast="polars").run, FastRun)  # shuffled: a query in several blocks
    rp.write_text("".join(sorted(rp.read_text().splitlines(keepends=True), key=lambda ln: ln.split()[0])))
    fast, slow = load(qp, rp, fast="polars"), load(qp, rp, fast=False)
    assert isinstance(fast.run, FastRun) and not isinstance(slow.run, FastRun)
    assert fast.runid == slow.runid == "tag"
    _, ms = parse_measures(["all_trec", "judged.10"])
    for complete in (False, True):
        for max_docs in (None, 7):
            a = compute(evaluate_input(fast, complete=complete, max_docs=max_docs), ms)
            b = compute(evaluate_input(slow, complete=complete, max_docs=max_docs), ms)
            for m in ms:
                np.testing.assert_array_equal(a[m], b[m], err_msg=m.trec_name)
    # a tie, a shuffled file, a tab, a duplicate: the general reader takes over (or refuses)
    lines = rp.read_text().splitlines()
    rp.write_text("\n".join(reversed(lines)) + "\n")
    assert isinstance(load(qp, rp, fast="polars").run, FastRun)  # out of order but tie-free: sorted here
    q0 = lines[0].split()[0]
    rp.write_text("\n".join(lines + [f"{q0} Q0 zz-new 1 {lines[0].split()[4]} tag"]) + "\n")
    assert not isinstance(load(qp, rp, fast="polars").run, FastRun)
    rp.write_text("\n".join(lines + [lines[0].replace(" tag", " tag2").replace("Q0", "Q1")]) + "\n")
    with pytest.raises(ValueError, match="duplicate docs"):
        load(qp, rp)
