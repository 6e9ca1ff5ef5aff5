"""Measures as objects (issue 19): a small registry in the spirit of ir_measures.

A `Measure` is a family (trec_eval's measure name: `ndcg_cut`, `P`, `map`, ...), a parameter
(a cutoff, or a recall level for `iprec_at_recall`) and an optional relevance threshold; it
knows its trec_eval names (`ndcg_cut.10` to request it, `ndcg_cut_10` in the output), its
ir_measures-style name (`nDCG@10`) and its vectorised implementation. `parse_measures` reads
either spelling (`nDCG@10`, `P@5`, `AP`, `RR@10`, `Judged@10`, `R@50`, `P(rel=2)@5`,
`ndcg_cut.10`, `P.5,10`, `iprec_at_recall..10,.20`, and the sets `official` and `all_trec`).

Every family is computed for all queries at once from a `Ranked` table: the relevance value of
each retrieved document in rank order, queries laid end to end (CSR offsets), and the judged
relevance values of each query. Values follow trec_eval 10.0 exactly (its `m_*.c`): a
relevance value is the qrels grade of the document (-1 when it is not in the qrels, -2 when the
qrels hold it with a negative grade); binary measures count a document as relevant when its
value is >= the relevance threshold (`-l`, default 1); `ndcg`, `ndcg_cut` use the grade as gain
and ignore the threshold. Sums run in rank order (`np.bincount` adds its weights in input
order), so the per-query values are the bits of trec_eval's loops wherever the operations are
the same. `iprec_at_recall` takes its cutoffs with `lround` (trec_eval 10.0) or, with
`convention="v9"`, as trec_eval 9.x and pytrec_eval do (`(long)(float(p) * R + 0.9)`).

How the documents of a ranking earn their relevance value is the credit strategy, chosen when
the `Ranked` table is built (`lens_core.measures.trec`): `doc` (docno equality, trec_eval's
rule), `span` (SPEC §4 span credit) or `file` (same repo and path).

The weekly pipeline's measures come from config through this registry (`measures:` in
lens.yaml): a `PipelineMeasure` is a measure and its credit (`span`, or `span+sla`, written
`SLA-R@50`), with a deterministic per-query column (the contract's names for the contract's
seven, `ndcg_10` ... `success_10`; else the trec_eval name, `P_5`, `map`, `ndcg_cut_20`, `sla_`
before it under SLA credit). `configured_measures` gives the contract's then the configured
extras; `metric_column` resolves a `metric:` written as registry name or column; `check_config`
resolves every measure the config names and refuses an unknown one in one line naming the key
and the file; `label` gives a column's registry name (the site's labels).

Why this is one module: the family table names each vectorised implementation, the `Measure`
objects and the parser read that table, and the implementations share the per-threshold
arrays of `Ranked` (`_Level`); split, each part would import the others' private pieces.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np

MIN_GEO_MEAN = 0.00001  # trec_eval's floor for gm_map / gm_bpref
NONPOOL = -1  # trec_eval's RELVALUE_NONPOOL: the document is not in the qrels
UNJUDGED = -2  # trec_eval's RELVALUE_UNJUDGED: in the qrels with a negative grade

CUTOFFS = (5, 10, 15, 20, 30, 100, 200, 500, 1000)
RECALL_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class MeasureError(ValueError):
    """A measure string that names no supported measure."""


# ---------------------------------------------------------------------------------------------
# The table every measure reads
# ---------------------------------------------------------------------------------------------
@dataclass
class Ranked:
    """The evaluated queries of one run, ready for every measure.

    `qids`: the evaluated queries, in output order; `offsets` (len(qids) + 1): where each
    query's retrieved documents lie in `rel`, which holds their relevance values in rank order
    (>= 0 a judged grade, NONPOOL, UNJUDGED); `judged_q`, `judged_rel`: one entry per judged
    document (or span) of the evaluated queries: its query's index and its grade (negative
    grades are kept and count as judged-unjudged, as in trec_eval)."""

    qids: list[str]
    offsets: np.ndarray
    rel: np.ndarray
    judged_q: np.ndarray
    judged_rel: np.ndarray
    runid: str = ""
    _levels: dict = field(default_factory=dict, repr=False)

    @property
    def nq(self) -> int:
        return len(self.qids)

    @cached_property
    def num_ret(self) -> np.ndarray:
        return np.diff(self.offsets).astype(np.int64)

    @cached_property
    def hq(self) -> np.ndarray:
        """The query index of each retrieved document (int32: memory)."""
        return np.repeat(np.arange(self.nq, dtype=np.int32), self.num_ret)

    @cached_property
    def rank(self) -> np.ndarray:
        """1-based rank of each retrieved document within its query (int32, built in place)."""
        rank = np.arange(1, self.rel.size + 1, dtype=np.int32)
        rank -= np.repeat(self.offsets[:-1].astype(np.int32), self.num_ret)
        return rank

    def count(self, mask: np.ndarray) -> np.ndarray:
        """Per query: the retrieved documents where `mask` holds."""
        return np.bincount(self.hq[mask], minlength=self.nq).astype(np.int64)

    def total(self, mask: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Per query: the sum of `weights` (aligned with `mask`'s true entries), in rank order."""
        return np.bincount(self.hq[mask], weights=weights, minlength=self.nq)

    def segmented_cumsum(self, x: np.ndarray) -> np.ndarray:
        """Running count of `x` within each query (x: bool or int per retrieved document)."""
        c = np.cumsum(x, dtype=np.int32)
        before = np.concatenate((np.zeros(1, np.int32), c))[self.offsets[:-1]]
        c -= np.repeat(before, self.num_ret)
        return c

    def level(self, level: int) -> "_Level":
        got = self._levels.get(level)
        if got is None:
            got = self._levels[level] = _Level(self, level)
        return got

    @cached_property
    def ideal_order(self) -> tuple[np.ndarray, np.ndarray]:
        """(query index, position) of each positive judged grade, sorted by query then grade
        descending: the ideal ranking of the ndcg family. Positions are 1-based."""
        pos_mask = self.judged_rel > 0
        q, g = self.judged_q[pos_mask], self.judged_rel[pos_mask]
        order = np.lexsort((-g, q))
        q, g = q[order], g[order]
        starts = np.searchsorted(q, np.arange(self.nq), side="left")
        pos = np.arange(q.size, dtype=np.int64) - starts[q] + 1 if q.size else np.zeros(0, np.int64)
        return q, g, pos


class _Level:
    """What the binary measures need at one relevance threshold."""

    def __init__(self, r: Ranked, level: int):
        self.r, self.level = r, level
        self.isrel = r.rel >= level
        self.cumrel = r.segmented_cumsum(self.isrel)
        jq, jr = r.judged_q, r.judged_rel
        self.num_rel = np.bincount(jq[jr >= level], minlength=r.nq).astype(np.int64)
        self.num_nonrel = np.bincount(jq[(jr >= 0) & (jr < level)], minlength=r.nq).astype(np.int64)
        self.num_rel_ret = r.count(self.isrel)

    @cached_property
    def first_rel(self) -> np.ndarray:
        """Rank of the first relevant document of each query (0: none)."""
        first = np.zeros(self.r.nq, dtype=np.int64)
        idx = np.flatnonzero(self.isrel)
        if idx.size:
            q = self.r.hq[idx]
            keep = np.concatenate(([True], q[1:] != q[:-1]))
            first[q[keep]] = self.r.rank[idx[keep]]
        return first

    def rel_at(self, k: np.ndarray | int) -> np.ndarray:
        """Relevant documents in the top k (k per query or one k)."""
        kk = k if np.isscalar(k) else np.asarray(k)[self.r.hq]
        return self.r.count(self.isrel & (self.r.rank <= kk))

    def ap_terms(self, k: float = math.inf) -> np.ndarray:
        m = self.isrel & (self.r.rank <= k)
        return self.r.total(m, self.cumrel[m] / self.r.rank[m])

    @cached_property
    def rel_precision(self) -> np.ndarray:
        """Per relevant retrieved document (in rank order): max over the relevant documents at or
        after it in its ranking of precision there, which is trec_eval's interpolated precision
        from that rank on (precision only rises at a relevant document). Exact: a segmented
        suffix maximum by doubling steps, no arithmetic on the values."""
        r = self.r
        idx = np.flatnonzero(self.isrel)
        best = self.cumrel[idx] / r.rank[idx]
        q = r.hq[idx]
        step = 1
        while step < best.size:
            same = q[:-step] == q[step:]
            if not same.any():
                break
            np.maximum(best[:-step], np.where(same, best[step:], best[:-step]), out=best[:-step])
            step *= 2
        return best


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b where b > 0, else 0 (trec_eval leaves such values at 0)."""
    out = np.zeros(np.broadcast(a, b).shape, dtype=np.float64)
    np.divide(a, b, out=out, where=np.asarray(b) > 0)
    return out


# ---------------------------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------------------------
def _num_q(r: Ranked, lv: _Level, p) -> np.ndarray:
    return np.ones(r.nq, dtype=np.int64)


def _num_ret(r: Ranked, lv: _Level, p) -> np.ndarray:
    return r.num_ret


def _num_rel(r: Ranked, lv: _Level, p) -> np.ndarray:
    return lv.num_rel


def _num_rel_ret(r: Ranked, lv: _Level, p) -> np.ndarray:
    return lv.num_rel_ret


def _map(r: Ranked, lv: _Level, p) -> np.ndarray:
    return _div(lv.ap_terms(), lv.num_rel)


def _map_cut(r: Ranked, lv: _Level, p) -> np.ndarray:
    return _div(lv.ap_terms(p), lv.num_rel)


def _gm_map(r: Ranked, lv: _Level, p) -> np.ndarray:
    return np.log(np.maximum(_map(r, lv, p), MIN_GEO_MEAN))


def _rprec(r: Ranked, lv: _Level, p) -> np.ndarray:
    return _div(lv.rel_at(lv.num_rel).astype(np.float64), lv.num_rel)


def _bpref_terms(r: Ranked, lv: _Level) -> np.ndarray:
    nonrel = (r.rel >= 0) & (r.rel < lv.level)
    seen = lv.r.segmented_cumsum(nonrel)[lv.isrel]
    nr = lv.num_rel[r.hq[lv.isrel]]
    denom = np.minimum(lv.num_nonrel[r.hq[lv.isrel]], nr)
    term = np.ones(seen.size)
    some = seen > 0
    term[some] = 1.0 - np.minimum(seen[some], nr[some]) / denom[some]
    return r.total(lv.isrel, term)


def _bpref(r: Ranked, lv: _Level, p) -> np.ndarray:
    return _div(_bpref_terms(r, lv), lv.num_rel)


def _gm_bpref(r: Ranked, lv: _Level, p) -> np.ndarray:
    return np.log(np.maximum(_bpref(r, lv, p), MIN_GEO_MEAN))


def _recip_rank(r: Ranked, lv: _Level, p) -> np.ndarray:
    first = lv.first_rel
    ok = (first > 0) & (first <= (p if p is not None else math.inf))
    return _div(ok.astype(np.float64), np.where(ok, first, 0))


def _iprec_cutoffs(p: float, num_rel: np.ndarray, convention: str) -> np.ndarray:
    if convention == "v9":  # (long) (percent * num_rel + 0.9), as trec_eval 9.x in pytrec_eval
        return (p * num_rel.astype(np.float64) + 0.9).astype(np.int64)
    return np.floor(p * num_rel.astype(np.float64) + 0.5).astype(np.int64)  # lround (x >= 0)


def iprec_at_recall(r: Ranked, lv: _Level, p: float, convention: str = "v10") -> np.ndarray:
    """Interpolated precision at recall level p (trec_eval `iprec_at_recall`)."""
    cut = _iprec_cutoffs(p, lv.num_rel, convention)
    best = lv.rel_precision
    first = np.concatenate(([0], np.cumsum(lv.num_rel_ret)))[:-1]  # each query's first in `best`
    out = np.zeros(r.nq)
    some = lv.num_rel_ret > 0
    zero = some & (cut == 0)  # every rank: the max is at a relevant one (0 when there is none)
    out[zero] = best[first[zero]]
    mid = some & (cut > 0) & (cut <= lv.num_rel_ret)
    out[mid] = best[first[mid] + cut[mid] - 1]
    return out


def _P(r: Ranked, lv: _Level, p) -> np.ndarray:
    return lv.rel_at(p) / float(p)


def _recall(r: Ranked, lv: _Level, p) -> np.ndarray:
    return _div(lv.rel_at(p).astype(np.float64), lv.num_rel)


def _success(r: Ranked, lv: _Level, p) -> np.ndarray:
    return ((lv.first_rel > 0) & (lv.first_rel <= p)).astype(np.float64)


def _dcg(r: Ranked, k: float) -> np.ndarray:
    m = (r.rel > 0) & (r.rank <= k)
    return r.total(m, r.rel[m] / np.log2(r.rank[m] + 1.0))


def _idcg(r: Ranked, k: float) -> np.ndarray:
    q, g, pos = r.ideal_order
    m = pos <= k
    return np.bincount(q[m], weights=g[m] / np.log2(pos[m] + 1.0), minlength=r.nq)


def _ndcg(r: Ranked, lv: _Level, p) -> np.ndarray:
    return _div(_dcg(r, math.inf), _idcg(r, math.inf))


def _ndcg_cut(r: Ranked, lv: _Level, p) -> np.ndarray:
    return _div(_dcg(r, p), _idcg(r, p))


def _set_P(r: Ranked, lv: _Level, p) -> np.ndarray:
    return _div(lv.num_rel_ret.astype(np.float64), r.num_ret)


def _set_recall(r: Ranked, lv: _Level, p) -> np.ndarray:
    return _div(lv.num_rel_ret.astype(np.float64), lv.num_rel)


def _set_map(r: Ranked, lv: _Level, p) -> np.ndarray:
    return _set_P(r, lv, p) * _set_recall(r, lv, p)


def _set_F(r: Ranked, lv: _Level, p) -> np.ndarray:
    beta = 1.0 if p is None else float(p)
    P, R = _set_P(r, lv, p), _set_recall(r, lv, p)
    return _div((beta * beta + 1.0) * P * R, beta * beta * P + R)


def _num_nonrel_judged_ret(r: Ranked, lv: _Level, p) -> np.ndarray:
    return r.count((r.rel >= 0) & (r.rel < lv.level))


def _unj(r: Ranked, lv: _Level, p) -> np.ndarray:
    return r.count((r.rel < 0) & (r.rank <= p)) / float(p)


def _judged(r: Ranked, lv: _Level, p) -> np.ndarray:
    """Lens extension (ir_measures' Judged@k): judged share of the top-k retrieved."""
    return _div(r.count((r.rel >= 0) & (r.rank <= p)).astype(np.float64), np.minimum(r.num_ret, p))


@dataclass(frozen=True)
class Family:
    """One measure family: trec_eval name, value kind, parameter defaults and spelling."""

    name: str
    fn: Callable
    kind: str = "float"  # "float" (mean, %6.4f), "int" (sum, %ld), "gm" (geometric mean, summary only)
    params: tuple = ()  # default parameters (cutoffs); () for a measure without one
    param_fmt: str = "{:d}"  # how a parameter appears in trec_eval's output name
    per_query: bool = True  # printed per query with -q
    ir_name: str = ""  # ir_measures spelling
    trec_eval: bool = True  # a trec_eval measure (False: a lens extension)
    doc: str = ""


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("num_q", _num_q, kind="count", per_query=False, ir_name="NumQ", doc="queries evaluated"),
        Family("num_ret", _num_ret, kind="int", ir_name="NumRet", doc="documents retrieved"),
        Family("num_rel", _num_rel, kind="int", ir_name="NumRel", doc="relevant documents"),
        Family("num_rel_ret", _num_rel_ret, kind="int", ir_name="NumRelRet", doc="relevant documents retrieved"),
        Family("map", _map, ir_name="AP", doc="mean average precision"),
        Family("gm_map", _gm_map, kind="gm", per_query=False, ir_name="GMAP", doc="geometric mean of AP"),
        Family("Rprec", _rprec, ir_name="Rprec", doc="precision at R"),
        Family("bpref", _bpref, ir_name="Bpref", doc="binary preference"),
        Family("recip_rank", _recip_rank, ir_name="RR", doc="reciprocal rank of the first relevant"),
        Family(
            "iprec_at_recall",
            iprec_at_recall,
            params=RECALL_LEVELS,
            param_fmt="{:3.2f}",
            ir_name="IPrec",
            doc="interpolated precision at recall levels",
        ),
        Family("P", _P, params=CUTOFFS, ir_name="P", doc="precision at k"),
        Family("recall", _recall, params=CUTOFFS, ir_name="R", doc="recall at k"),
        Family("gm_bpref", _gm_bpref, kind="gm", per_query=False, ir_name="GMBpref", doc="geometric mean of bpref"),
        Family("ndcg", _ndcg, ir_name="nDCG", doc="nDCG over the whole ranking (gain = grade)"),
        Family("ndcg_cut", _ndcg_cut, params=CUTOFFS, ir_name="nDCG", doc="nDCG at k (gain = grade)"),
        Family("map_cut", _map_cut, params=CUTOFFS, ir_name="AP", doc="AP at k"),
        Family("success", _success, params=(1, 5, 10), ir_name="Success", doc="any relevant in the top k"),
        Family("set_P", _set_P, ir_name="SetP", doc="precision of the retrieved set"),
        Family("set_recall", _set_recall, ir_name="SetR", doc="recall of the retrieved set"),
        Family("set_map", _set_map, ir_name="SetAP", doc="set_P x set_recall"),
        Family("set_F", _set_F, ir_name="SetF", doc="F1 of the retrieved set"),
        Family(
            "num_nonrel_judged_ret",
            _num_nonrel_judged_ret,
            kind="int",
            ir_name="NumNonRelJudgedRet",
            doc="judged non-relevant documents retrieved",
        ),
        Family("unj", _unj, params=(5, 10, 20), ir_name="Unj", doc="unjudged share at k (over k)"),
        Family(
            "judged",
            _judged,
            params=(10,),
            ir_name="Judged",
            trec_eval=False,
            doc="judged share of the top k retrieved (lens extension)",
        ),
    )
}
# trec_eval's internal order (measures.c te_trec_measures): output follows it, not -m's order.
TREC_ORDER = (
    "runid num_q num_ret num_rel num_rel_ret map gm_map Rprec bpref recip_rank iprec_at_recall P "
    "relstring recall infAP gm_bpref Rprec_mult utility 11pt_avg binG G dcg ideal_dcg ndcg ndcg_rel Rndcg "
    "ndcg_cut map_cut relative_P success set_P set_relative_P set_recall set_map set_F "
    "num_nonrel_judged_ret rbp rbp_resid unj judged"
).split()
OFFICIAL = ("runid", "num_q", "num_ret", "num_rel", "num_rel_ret", "map", "gm_map", "Rprec", "bpref")
OFFICIAL += ("recip_rank", "iprec_at_recall", "P")
# trec_eval's all_trec set, less the measures not implemented here (relstring, infAP,
# Rprec_mult, utility, 11pt_avg, ndcg_rel, Rndcg, binG, G, relative_P, set_relative_P, rbp,
# rbp_resid): see docs/spec_notes/issue19-trec.md.
ALL_TREC = (
    "runid num_q num_ret num_rel num_rel_ret map gm_map Rprec bpref recip_rank iprec_at_recall P recall "
    "unj gm_bpref ndcg success map_cut ndcg_cut set_P set_recall set_map set_F num_nonrel_judged_ret"
).split()


@dataclass(frozen=True)
class Measure:
    """One measure value per query: a family, its parameter (cutoff / recall level, None for
    none) and its relevance threshold (None: the command's, `-l`, default 1)."""

    family: str
    param: float | int | None = None
    rel: int | None = None

    @property
    def spec(self) -> Family:
        return FAMILIES[self.family]

    @property
    def trec_name(self) -> str:
        """The name trec_eval prints (`ndcg_cut_10`, `iprec_at_recall_0.10`, `map`)."""
        if self.param is None:
            return self.family
        return f"{self.family}_{self.spec.param_fmt.format(self.param)}"

    @property
    def request(self) -> str:
        """The name trec_eval's -m takes (`ndcg_cut.10`)."""
        return self.family if self.param is None else f"{self.family}.{self._param_str()}"

    def _param_str(self) -> str:
        return str(self.param) if isinstance(self.param, int) else repr(float(self.param))

    @property
    def name(self) -> str:
        """ir_measures-style name (`nDCG@10`, `P(rel=2)@5`, `IPrec@0.1`)."""
        base = self.spec.ir_name or self.family
        if self.rel is not None:
            base += f"(rel={self.rel})"
        return base if self.param is None else f"{base}@{self._param_str()}"

    @property
    def column(self) -> str:
        """A column-safe name (`ndcg_cut_10`; with a threshold, `P_5_rel2`)."""
        return self.trec_name + (f"_rel{self.rel}" if self.rel is not None else "")

    def compute(self, r: Ranked, level: int = 1, convention: str = "v10") -> np.ndarray:
        lv = r.level(self.rel if self.rel is not None else level)
        if self.family == "iprec_at_recall":
            return iprec_at_recall(r, lv, float(self.param), convention)
        return self.spec.fn(r, lv, self.param)


def summarise(m: Measure, values: np.ndarray) -> float | int:
    """trec_eval's summary over the evaluated queries: the mean, the sum for counts, exp of the
    mean of the logs for gm_*."""
    kind = m.spec.kind
    if kind in ("int", "count"):
        return int(values.sum())
    if values.size == 0:
        return 0.0
    total = float(np.cumsum(values, dtype=np.float64)[-1])  # in query order, as trec_eval adds
    return total / values.size if kind != "gm" else math.exp(total / values.size)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------
_IR_ALIASES = {
    "ndcg": ("ndcg", "ndcg_cut"),
    "p": ("P", "P"),
    "r": ("recall", "recall"),
    "recall": ("recall", "recall"),
    "ap": ("map", "map_cut"),
    "map": ("map", "map_cut"),
    "gmap": ("gm_map", None),
    "rr": ("recip_rank", "recip_rank"),
    "mrr": ("recip_rank", "recip_rank"),
    "rprec": ("Rprec", None),
    "r-prec": ("Rprec", None),
    "bpref": ("bpref", None),
    "success": (None, "success"),
    "judged": (None, "judged"),
    "unj": (None, "unj"),
    "iprec": (None, "iprec_at_recall"),
    "numq": ("num_q", None),
    "numret": ("num_ret", None),
    "numrel": ("num_rel", None),
    "numrelret": ("num_rel_ret", None),
    "setp": ("set_P", None),
    "setr": ("set_recall", None),
    "setf": ("set_F", None),
    "setap": ("set_map", None),
}
_IR = re.compile(r"^(?P<name>[A-Za-z][A-Za-z_-]*)(?:\(rel=(?P<rel>-?\d+)\))?(?:@(?P<p>[0-9.]+))?$")


def _param(family: str, text: str, whole: str) -> float | int:
    try:
        if FAMILIES[family].param_fmt == "{:d}":
            v = int(text)
            if v <= 0:
                raise ValueError
            return v
        v = float(text)
        if not 0.0 <= v <= 1.0:
            raise ValueError
        return v
    except ValueError:
        raise MeasureError(f"measure {whole!r}: bad parameter {text!r} for {family}") from None


def parse_measure(text: str) -> list[Measure]:
    """One -m argument -> its measures (a set name gives several)."""
    s = text.strip()
    if s in ("official", "trec"):
        return [m for f in OFFICIAL if f != "runid" for m in family_measures(f)]
    if s == "all_trec":
        return [m for f in ALL_TREC if f != "runid" for m in family_measures(f)]
    if s == "runid":
        return []
    fam, _, params = s.partition(".")
    if fam in FAMILIES:  # trec_eval spelling: family[.p1,p2,...]
        if not params:
            return family_measures(fam)
        if not FAMILIES[fam].params and fam != "recip_rank":
            raise MeasureError(f"measure {text!r}: {fam} takes no parameter")
        if fam == "recip_rank":
            return [Measure(fam, int(_param("P", p, text))) for p in params.split(",")]
        return [Measure(fam, _param(fam, p, text)) for p in params.split(",") if p != ""]
    m = _IR.match(s)
    if m is None or m["name"].lower() not in _IR_ALIASES:
        raise MeasureError(
            f"unknown measure {text!r} (trec_eval names such as ndcg_cut.10, P.5, map, or nDCG@10, P@5, AP, RR@10)"
        )
    plain, cut = _IR_ALIASES[m["name"].lower()]
    rel = int(m["rel"]) if m["rel"] is not None else None
    if m["p"] is None:
        if plain is None:
            return [Measure(cut, p, rel) for p in FAMILIES[cut].params]
        return [Measure(plain, None, rel)]
    if cut is None:
        raise MeasureError(f"measure {text!r}: {m['name']} takes no cutoff")
    return [Measure(cut, _param(cut if cut != "recip_rank" else "P", m["p"], text), rel)]


def parse_measures(texts: list[str] | tuple[str, ...]) -> tuple[bool, list[Measure]]:
    """-m arguments -> (runid requested, measures in trec_eval's output order, each once)."""
    runid = False
    seen: dict[Measure, None] = {}
    for t in texts:
        if t.strip() in ("official", "trec", "all_trec", "runid"):
            runid = True
        for m in parse_measure(t):
            seen.setdefault(m, None)
    order = {f: i for i, f in enumerate(TREC_ORDER)}
    # trec_eval prints a family's parameters in ascending order
    ms = sorted(seen, key=lambda m: (order.get(m.family, len(order)), -1 if m.param is None else m.param, m.rel or 0))
    return runid, ms


def family_measures(family: str) -> list[Measure]:
    f = FAMILIES[family]
    return [Measure(family, p) for p in f.params] if f.params else [Measure(family)]


def supported() -> list[str]:
    """Every supported family with its trec_eval request name."""
    return list(FAMILIES)


# ---------------------------------------------------------------------------------------------
# The weekly pipeline's per-query measures, as registry measures
# ---------------------------------------------------------------------------------------------
# Each column of `contracts.PER_QUERY_METRICS` is one registry measure under SPEC §4 span
# credit ("span+sla": span credit counting only hits returned within the SLA). Computed by
# `lens_core.measures.metrics` (the weekly chain's vectorised form; the suite's query set, a
# missing query scores 0); tests/test_trec_pipeline.py holds the two equal query by query on
# the queries both evaluate.
PIPELINE_MEASURES: dict[str, tuple[Measure, str]] = {
    "ndcg_10": (Measure("ndcg_cut", 10), "span"),
    "recall_50": (Measure("recall", 50), "span"),
    "sla_recall_50": (Measure("recall", 50), "span+sla"),
    "mrr_10": (Measure("recip_rank", 10), "span"),
    "success_1": (Measure("success", 1), "span"),
    "success_5": (Measure("success", 5), "span"),
    "success_10": (Measure("success", 10), "span"),
}


def pipeline_measure(column: str) -> Measure:
    """The registry measure behind a per-query column (`ndcg_10` -> nDCG@10)."""
    try:
        return PIPELINE_MEASURES[column][0]
    except KeyError:
        raise MeasureError(f"{column!r} is not a per-query measure ({', '.join(PIPELINE_MEASURES)})") from None


# ---------------------------------------------------------------------------------------------
# The pipeline's measures from config (`measures:` in lens.yaml)
# ---------------------------------------------------------------------------------------------
SLA_PREFIX = "SLA-"  # a registry name with this prefix: span credit counting only in-SLA hits
PIPELINE_CREDITS = ("span", "span+sla")
# Score metrics that are not registry measures (latency, diagnostics, ...): a `metric:` may name
# them as they are (lens_core.measures.scoring computes them).
NON_MEASURE_METRICS = (
    "lat_p50",
    "lat_p95",
    "lat_p99",
    "p99_p95",
    "within_sla",
    "judged_10",
    "file_credit",
    "failed",
    "probes",
    "cpu_ms",
)


# The per-query table's other columns (keys, slices, diagnostics): no extra measure takes one.
RESERVED_COLUMNS = frozenset(
    "run_id system qid suite intent language lat_ms judged_10 n_hits_10 judged_hits_10 span_gain_10 "
    "file_gain_10 failed within_sla probes cpu_ms".split()
)


@dataclass(frozen=True)
class PipelineMeasure:
    """A per-query measure of the weekly pipeline: a registry measure and its credit
    (`span`, or `span+sla`: span credit counting only hits returned within the SLA)."""

    measure: Measure
    credit: str = "span"

    @property
    def name(self) -> str:
        """The registry name (`nDCG@10`, `SLA-R@50`, `P@5`): what config, rules and the site use."""
        return (SLA_PREFIX if self.credit == "span+sla" else "") + self.measure.name

    @property
    def column(self) -> str:
        """The per-query column: today's name for the contract's measures (`ndcg_10`,
        `sla_recall_50`, ...), else the measure's column-safe trec_eval name (`P_5`, `map`,
        `ndcg_cut_20`), prefixed `sla_` under SLA credit. Deterministic: the same measure gives
        the same column in every week's table."""
        for col, (m, credit) in PIPELINE_MEASURES.items():
            if m == self.measure and credit == self.credit:
                return col
        col = ("sla_" if self.credit == "span+sla" else "") + self.measure.column
        return f"m_{col}" if col in RESERVED_COLUMNS else col  # Judged@10 is not the judged_10 diagnostic

    @property
    def in_contract(self) -> bool:
        return self.column in PIPELINE_MEASURES


def pipeline_measure_named(text: str) -> PipelineMeasure:
    """A registry name (`nDCG@10`, `ndcg_cut.10`, `SLA-R@50`) or a per-query column of the
    contract (`ndcg_10`) -> its PipelineMeasure. One name must give one measure of one value per
    query (a family without its cutoff, e.g. `P`, names several and is refused)."""
    s = str(text).strip()
    if s in PIPELINE_MEASURES:
        m, credit = PIPELINE_MEASURES[s]
        return PipelineMeasure(m, credit)
    credit = "span"
    if s.upper().startswith(SLA_PREFIX):
        s, credit = s[len(SLA_PREFIX) :], "span+sla"
    ms = parse_measure(s)
    if len(ms) != 1:
        raise MeasureError(f"{text!r} names {len(ms)} measures: name one (e.g. with its cutoff, P@5)")
    m = ms[0]
    if not m.spec.per_query or m.spec.kind != "float":
        raise MeasureError(f"{text!r} is not a per-query mean (a count or a summary-only measure)")
    return PipelineMeasure(m, credit)


def contract_measures() -> tuple[PipelineMeasure, ...]:
    """The per-query contract's measures, in the contract's column order."""
    return tuple(PipelineMeasure(m, credit) for m, credit in PIPELINE_MEASURES.values())


def configured_measures(cfg=None) -> tuple[PipelineMeasure, ...]:
    """The pipeline's measures: the contract's (always, in its order), then the extras that
    `measures:` of the config lists (in its order, each once). Raises ValueError, one line naming
    the key and the file, for a name the registry does not resolve."""
    if cfg is None:
        from lens_core.common.settings import load_config  # lazy: config only where it is asked for

        cfg = load_config()
    return _configured(tuple(cfg.measures))


@functools.lru_cache(maxsize=16)
def _configured(names: tuple[str, ...]) -> tuple[PipelineMeasure, ...]:
    out = list(contract_measures())
    for i, text in enumerate(names):
        try:
            pm = pipeline_measure_named(text)
        except MeasureError as e:
            raise ValueError(_config_line(("measures", i), f"unknown measure {text!r}: {e}")) from None
        if pm not in out:
            out.append(pm)
    return tuple(out)


def extra_measures(cfg=None) -> tuple[PipelineMeasure, ...]:
    """The configured measures beyond the contract's: extra per-query columns."""
    return tuple(pm for pm in configured_measures(cfg) if not pm.in_contract)


def metric_column(text: str, where: tuple = (), cfg=None) -> str:
    """A `metric:` value of the config (a promotion rule, a primary comparison) -> the metric
    name of scores and comparisons: a configured measure's registry name (`nDCG@10`) or column
    (`ndcg_10`) -> its column; a score metric that is not a measure (`lat_p99`, `file_credit`)
    -> itself. Anything else raises ValueError, one line naming the key (`where`, the dotted
    location) and the file."""
    s = str(text).strip()
    if s in NON_MEASURE_METRICS:
        return s
    measures = configured_measures(cfg)
    by_column = {pm.column: pm for pm in measures}
    if s in by_column:
        return s
    try:
        pm = pipeline_measure_named(s)
    except MeasureError as e:
        raise ValueError(_config_line(where, f"unknown measure {text!r}: {e}")) from None
    if pm not in measures:
        raise ValueError(
            _config_line(where, f"measure {text!r} ({pm.column}) is not among the configured `measures:`; add it there")
        )
    return pm.column


def label(metric: str) -> str:
    """The registry name of a per-query column (`ndcg_10` -> `nDCG@10`, `sla_recall_50` ->
    `SLA-R@50`, `P_5` -> `P@5`); a metric that is not a measure keeps its name."""
    if metric in PIPELINE_MEASURES:
        m, credit = PIPELINE_MEASURES[metric]
        return PipelineMeasure(m, credit).name
    base = metric[2:] if metric.startswith("m_") else metric
    base, credit = (base[4:], "span+sla") if base.startswith("sla_") else (base, "span")
    base, _, rel = base.partition("_rel") if re.search(r"_rel-?\d+$", base) else (base, "", "")
    for m in _COLUMN_MEASURES():
        if m.column == base:
            pm = PipelineMeasure(Measure(m.family, m.param, int(rel) if rel else None), credit)
            return pm.name if pm.column == metric else metric
    return metric


@functools.lru_cache(maxsize=1)
def _COLUMN_MEASURES() -> tuple[Measure, ...]:  # noqa: N802 - a cached constant
    return tuple(m for f in FAMILIES.values() if f.per_query and f.kind == "float" for m in family_measures(f.name))


def check_config(cfg=None) -> dict[tuple, str]:
    """Resolve every measure the config names: `measures:`, and the `metric:` of each pack's
    primary comparison and rules under `promotion:`. Returns {dotted location: column}; raises
    ValueError (one line: key and file) on the first name the registry refuses."""
    if cfg is None:
        from lens_core.common.settings import load_config  # lazy: config only where it is asked for

        cfg = load_config()
    configured_measures(cfg)
    out: dict[tuple, str] = {}
    for pack, spec in cfg.promotion.items():
        loc = ("promotion", pack, "primary", "metric")
        out[loc] = metric_column(spec.primary.metric, loc, cfg)
        for i, rule in enumerate(spec.rules):
            if getattr(rule, "metric", None) is not None:
                loc = ("promotion", pack, "rules", i, "metric")
                out[loc] = metric_column(rule.metric, loc, cfg)
    return out


def _config_line(where: tuple, message: str) -> str:
    """`<file>: `<dotted key>`: <message>`, the file being the one the key was read from."""
    from lens_core.common.settings import config_key_source  # lazy: config only where it is asked for

    key = ".".join(str(x) for x in where) or "<top level>"
    return f"invalid Lens config: {config_key_source(where)}: `{key}`: {message}"
