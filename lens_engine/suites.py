"""Query suites with ground-truth spans, derived from the corpus (SPEC §11).

Suites (column `suite`), each query with an intent and a language:
- `nl`: the first sentence of a function's docstring (the docstring is not indexed). Dropped:
  sentences under 4 words, signature-style lines (`S.find(sub) -> int`), stubs (body only
  `pass` / `...` / `raise NotImplementedError`), and texts that occur more than once (the
  ground truth would be ambiguous). Intent `nl`, or `hard_nl` when the query shares at most
  `HARD_NL_MAX_OVERLAP` of its analysed terms with the function's indexed text (low lexical
  overlap: the slice the router's dense arm is for).
- `identifier`: a function name that is unique in the whole corpus (at least 4 characters,
  not a dunder), intent `identifier`.
- `structural`: intent `structural`, one of three templates chosen by a hash of the anchor
  function, each with an exact ground truth computed over the whole corpus:
  `class <Cls> method <name>` (every method `name` of a class named `Cls`),
  `def <name>(<params>)` (every function with that name and parameter list), and
  `functions that call <callee>` (every function calling `callee`, kept when 2..8 do).
  A template whose ground truth has more than 3 spans (8 for callers) is skipped.

Split: `split_of(package)` by a hash of the top-level package (train 30%, dev 20%, test 50%);
queries are anchored at functions of one split (default `test`), so no package's functions are
queried in two splits. The whole corpus is indexed; ground truth covers the whole corpus.
Every relevant span has rel 3 (the source span, as CodeSearchNet).
qids: `<suite>-<first 10 hex of sha256(suite, text)>`; stable and unique.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import polars as pl

from lens_core.common.contracts import GROUND_TRUTH_SCHEMA, QUERIES_SCHEMA
from lens_core.common.hashing import sha256_hex
from lens_engine.corpus import Corpus, Unit
from lens_engine.text import analyze

SPLITS = (("train", 0.30), ("dev", 0.20), ("test", 0.50))
SUITES = ("nl", "identifier", "structural")
HARD_NL_MAX_OVERLAP = 0.25
MIN_NL_WORDS = 4
MAX_NL_WORDS = 40


def split_of(package: str) -> str:
    """'train' | 'dev' | 'test' for a top-level package, by hash (stable across machines)."""
    u = int(sha256_hex(f"lens-split:{package}".encode())[:8], 16) / 2**32
    acc = 0.0
    for name, frac in SPLITS:
        acc += frac
        if u < acc:
            return name
    return SPLITS[-1][0]


_SENT_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`'\"*])|(?<=[.!?])$")


def first_sentence(doc: str) -> str:
    para = doc.strip().split("\n\n", 1)[0]
    para = " ".join(para.split())
    m = _SENT_END.search(para)
    return para[: m.start()].strip() if m else para


def _nl_text(u: Unit) -> str | None:
    if not u.doc or u.is_stub:
        return None
    s = first_sentence(u.doc)
    words = s.split()
    if len(words) < MIN_NL_WORDS or len(words) > MAX_NL_WORDS:
        return None
    if "->" in s or re.match(rf"^[\w.]*{re.escape(u.name)}\s*\(", s) or ">>>" in s:
        return None
    return s


def lexical_overlap(query: str, text: str) -> float:
    """Share of the query's analysed terms that occur in the text's analysed bag."""
    q = set(analyze(query)[1])
    if not q:
        return 0.0
    return len(q & set(analyze(text)[1])) / len(q)


def _qid(suite: str, text: str) -> str:
    digest = sha256_hex((suite + "\0" + text).encode())
    return f"{suite}-{digest[:10]}"


def _signature(u: Unit) -> str:
    return f"def {u.name}({', '.join(u.params)})"


def build_suites(
    corpus: Corpus, seed: int = 0, max_per_suite: int | None = None, split: str = "test"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(queries, ground_truth) with exactly QUERIES_SCHEMA / GROUND_TRUTH_SCHEMA columns."""
    if split not in {s for s, _ in SPLITS}:
        raise ValueError(f"split={split!r}: expected one of train, dev, test")
    units = corpus.units
    anchors = [i for i, u in enumerate(units) if split_of(u.package) == split and not u.is_stub]

    name_count = Counter(u.name for u in units)
    by_cls_name: dict[tuple[str, str], list[int]] = defaultdict(list)
    by_sig: dict[str, list[int]] = defaultdict(list)
    callers: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(units):
        if u.cls:
            by_cls_name[(u.cls.rsplit(".", 1)[-1], u.name)].append(i)
        by_sig[_signature(u)].append(i)
        for c in u.calls:
            callers[c].append(i)

    queries: dict[str, list[tuple[str, str, str, list[int]]]] = {s: [] for s in SUITES}

    # nl: drop every text that occurs more than once in the corpus (ambiguous ground truth).
    nl_all = [(_nl_text(u), i) for i, u in enumerate(units)]
    nl_counts = Counter(t.lower() for t, _ in nl_all if t)
    for i in anchors:
        t = nl_all[i][0]
        if t and nl_counts[t.lower()] == 1:
            intent = "hard_nl" if lexical_overlap(t, units[i].text) <= HARD_NL_MAX_OVERLAP else "nl"
            queries["nl"].append((t, intent, units[i].language, [i]))

    for i in anchors:
        u = units[i]
        if name_count[u.name] == 1 and len(u.name) >= 4 and not u.name.startswith("__"):
            queries["identifier"].append((u.name, "identifier", u.language, [i]))

    seen_callee: set[str] = set()
    for i in anchors:
        u = units[i]
        choice = int(sha256_hex(f"lens-struct:{seed}:{u.path}:{u.start_line}".encode())[:8], 16) % 3
        for attempt in range(3):
            kind = (choice + attempt) % 3
            if kind == 0 and u.cls and not u.name.startswith("__"):
                cls = u.cls.rsplit(".", 1)[-1]
                gt = by_cls_name[(cls, u.name)]
                if len(gt) <= 3:
                    queries["structural"].append((f"class {cls} method {u.name}", "structural", u.language, gt))
                    break
            elif kind == 1 and u.params and not u.name.startswith("__"):
                sig = _signature(u)
                gt = by_sig[sig]
                if len(gt) <= 3:
                    queries["structural"].append((sig, "structural", u.language, gt))
                    break
            elif kind == 2:
                cands = [c for c in u.calls if len(c) >= 4 and c not in seen_callee and 2 <= len(callers[c]) <= 8]
                if cands:
                    c = sorted(cands, key=lambda c: sha256_hex(f"{seed}:{c}".encode()))[0]
                    seen_callee.add(c)
                    queries["structural"].append((f"functions that call {c}", "structural", u.language, callers[c]))
                    break

    q_rows: list[dict] = []
    gt_rows: list[dict] = []
    for suite in SUITES:
        items = queries[suite]
        counts = Counter(t for t, *_ in items)
        items = [it for it in items if counts[it[0]] == 1]  # duplicates dropped
        items.sort(key=lambda it: sha256_hex(f"{seed}:{suite}:{it[0]}".encode()))
        if max_per_suite is not None:
            items = items[:max_per_suite]
        for text, intent, language, gt in items:
            qid = _qid(suite, text)
            q_rows.append({"qid": qid, "text": text, "suite": suite, "intent": intent, "language": language})
            for j in sorted(set(gt)):
                g = units[j]
                gt_rows.append(
                    {
                        "qid": qid,
                        "repo": g.repo,
                        "path": g.path,
                        "start_line": g.start_line,
                        "end_line": g.end_line,
                        "rel": 3,
                    }
                )
    qdf = pl.DataFrame(q_rows, schema=pl.Schema(pl.from_arrow(QUERIES_SCHEMA.empty_table()).schema))
    gdf = pl.DataFrame(gt_rows, schema=pl.Schema(pl.from_arrow(GROUND_TRUTH_SCHEMA.empty_table()).schema))
    if qdf["qid"].n_unique() != qdf.height:
        raise RuntimeError("qid collision in build_suites")
    return qdf.sort("qid"), gdf.sort(["qid", "repo", "path", "start_line"])
