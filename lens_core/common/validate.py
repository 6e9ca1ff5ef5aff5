"""The validation contract of every entry point (issue 18): one set of rules, written once.

Raw-run NDJSON (`lens_core.ingest.ndjson`), Parquet hits/qrels/agg and TREC run/qrels files
(`lens-eval score`) all check their rows against the rules below, vectorised (polars), and name
the first row that breaks one: `file:line` (1-based) for a text file, `file: row N column C`
(1-based) for Parquet. The rules:

- ids are present and not empty (nor only whitespace): run_id, system, qid, repo, path;
- ranks are integers >= 1, unique per ranking ((run_id, system, qid), or a raw record);
- line numbers are integers in 1..2^31-1 and start_line <= end_line;
- scores, latencies, costs and timestamps are finite numbers (no NaN, no ±Infinity); latencies
  are >= 0, an SLA is > 0, a request timestamp is epoch milliseconds in years 1970..9999;
- relevance grades are within the configured grades (`judging.grades`, default 0..3);
- (run_id, system, qid) is unique in an agg table.

Text files are also checked before they are parsed (`prescan_lines`): streaming, with bounded
memory, so that an absurd input (a 2 GB file of NUL bytes, a line of gigabytes, invalid UTF-8)
is refused early instead of being read whole.

A rule is a boolean polars expression that is true on a bad row, with an optional cheap screen
(an aggregate that is true whenever some row may be bad): clean tables pay for the screens
only. `first_violation` returns the first bad row in table order. A Parquet input is checked
whole, streaming (`parquet_violation`: a batch at a time, every row and column of the contract,
rank uniqueness screened across batches); a hit's `why` is non-empty, or exactly
`[WHY_UNKNOWN]` where the source reports no reasons (`why_problem`, issue 18).

Why this is one module: every entry point (ingestion's three tiers, `lens-eval score` and
`ingest`, the TREC readers) must give the same verdict with the same wording, so the rules, the
streaming readers that apply them to text and Parquet, and the `file:line` / `row N column C`
error forms live together; split apart, an entry point could drift from the contract unseen.
"""

from __future__ import annotations

import codecs
import errno
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from lens_core.common.tables import SchemaError

MAX_LINE_NUMBER = 2**31 - 1  # line numbers are int32 in every table
# A hit's `why` when the endpoint reports no reasons (the open-source Lens JSON shape): exactly
# ["unknown"]; its hits row carries no reason flag. A NDJSON hit's `why` is never empty (issue 18).
WHY_UNKNOWN = "unknown"
DEFAULT_GRADES: tuple[int, ...] = (0, 1, 2, 3)
EPOCH_MS_MAX = 253_402_300_800_000.0  # 10000-01-01T00:00:00Z in epoch milliseconds
# Bytes a text line of a TREC file may hold (a real one is about 100 bytes).
MAX_TREC_LINE = 1 << 20
# C0 control bytes no JSON text nor TREC line may hold (tab, LF and CR are whitespace in both).
_CONTROL = np.zeros(256, dtype=bool)
_CONTROL[[b for b in range(32) if b not in (9, 10, 13)]] = True
_READ = 1 << 22  # bytes read at a time by the streaming checks


@dataclass(frozen=True)
class Rule:
    """Rows where `bad` is true break the rule; `message` is formatted with the row's values
    (`{value}` is the value of `column`). `screen`, when given, is a cheap aggregate that is
    false only when no row can be bad (the mask is then not computed)."""

    column: str
    bad: pl.Expr
    message: str
    screen: pl.Expr | None = None
    prepare: tuple[pl.Expr, ...] = ()  # helper columns (aliased `_...`) `bad` and `screen` read


@dataclass(frozen=True)
class Violation:
    row: int  # 0-based position in the checked table
    column: str
    message: str


def first_violation(df: pl.DataFrame, rules: Sequence[Rule]) -> Violation | None:
    """The first row of `df` (in table order) that breaks one of `rules`, or None. The screens
    run first (those of rules with helper columns in their own plan, the helpers computed
    once), then the masks of the rules whose screen fired."""
    if not rules or df.height == 0:
        return None

    def run(of: Sequence[Rule], exprs: Sequence[pl.Expr]) -> tuple:
        helpers = {e.meta.output_name(): e for r in of for e in r.prepare}
        if not helpers:
            return df.select(exprs).row(0)
        return df.lazy().with_columns(*helpers.values()).select(exprs).collect().row(0)

    def screen(r: Rule, i: int) -> pl.Expr:
        return (r.screen if r.screen is not None else r.bad.fill_null(False).any()).alias(f"_{i}")

    plain = [i for i, r in enumerate(rules) if not r.prepare]
    flags = dict(zip(plain, run([], [screen(rules[i], i) for i in plain]) if plain else ()))
    for i, r in enumerate(rules):
        if r.prepare:
            flags[i] = run([r], [screen(r, i)])[0]
    suspects = [r for i, r in enumerate(rules) if flags[i]]
    if not suspects:
        return None
    firsts = run(suspects, [r.bad.fill_null(False).arg_true().first().alias(f"_{i}") for i, r in enumerate(suspects)])
    found = [(row, i) for i, row in enumerate(firsts) if row is not None]
    if not found:
        return None
    row, i = min(found)
    rule = suspects[i]
    values = df.row(row, named=True)
    return Violation(row, rule.column, rule.message.format_map({**values, "value": _show(values.get(rule.column))}))


def _show(v) -> str:
    return repr(v) if isinstance(v, str) else str(v)


# ---------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------
def id_rules(columns: Iterable[str]) -> list[Rule]:
    """Each column present and not empty (nor only whitespace). Screen: the column's minimum
    sorts at or after "!" (so no string is empty or starts with a control or space byte)."""
    out = []
    for c in columns:
        col = pl.col(c)
        out.append(
            Rule(
                c,
                col.is_null() | col.str.contains(r"^[ \t\n\r\f\v]*$"),
                f"{c} is empty or null",
                screen=(col.null_count() > 0) | (col.min() < "!").fill_null(False),
            )
        )
    return out


def maybe_blank(col: pa.Array | pa.ChunkedArray) -> bool:
    """The screen of `id_rules` for an Arrow string column, read from its buffers (no
    conversion): whether some value is null, empty or starts with a byte <= 0x20 (exactly
    when the column's minimum sorts before "!"). False: no value breaks the rule."""
    for c in col.chunks if isinstance(col, pa.ChunkedArray) else [col]:
        if not len(c):
            continue
        if c.null_count or not (pa.types.is_string(c.type) or pa.types.is_large_string(c.type)):
            return True  # nulls, or a layout read exactly instead
        _, offsets, data = c.buffers()
        width = np.int64 if pa.types.is_large_string(c.type) else np.int32
        off = np.frombuffer(offsets, dtype=width)[c.offset : c.offset + len(c) + 1]
        if (off[1:] == off[:-1]).any():
            return True
        if (np.frombuffer(data, dtype=np.uint8)[off[:-1]] < 0x21).any():
            return True
    return False


def unique_rule(keys: Sequence[str], column: str, message: str) -> Rule:
    """`column` unique within `keys` (the second occurrence is the bad row). Screen: each key
    fills one run of rows in which `column` strictly increases (the usual layout: each
    ranking's rows together, in rank order), so nothing repeats. Keys are compared by a
    64-bit hash (a helper column: one hash per row, then integer compares; a collision can only
    send the table to the exact test), and uniqueness is tested over the run starts only."""
    h = pl.col("_key_hash")
    new_key = (h != h.shift()).fill_null(True)
    rising = (pl.col(column) > pl.col(column).shift()).fill_null(False)
    key = pl.col(keys[0]) if len(keys) == 1 else pl.struct(keys)
    return Rule(
        column,
        ~pl.struct([*keys, column]).is_first_distinct(),
        message,
        screen=(new_key | rising).all().not_() | (h.filter(new_key).n_unique() != new_key.sum()),
        prepare=(key.hash().alias("_key_hash"),),
    )


def rank_rules(keys: Sequence[str], what: str = "(system, qid)", known_unique: bool = False) -> list[Rule]:
    """Ranks >= 1 and unique within `keys`. `known_unique`: the caller knows that ranks strictly
    increase within each ranking (the uniqueness rule cannot fire, `keys` need not exist)."""
    rank = pl.col("rank")
    out = [Rule("rank", rank.is_null() | (rank < 1), "rank {value} is not >= 1")]
    if not known_unique:
        out.append(unique_rule(keys, "rank", f"duplicate rank {{value}} for the same {what}"))
    return out


def span_rules() -> list[Rule]:
    out = []
    for c in ("start_line", "end_line"):
        col = pl.col(c)
        out.append(Rule(c, col.is_null() | (col < 1), f"{c} {{value}} is not >= 1"))
        out.append(Rule(c, col > MAX_LINE_NUMBER, f"{c} {{value}} is past 2^31-1"))
    out.append(
        Rule(
            "end_line",
            pl.col("start_line") > pl.col("end_line"),
            "inverted span: start_line {start_line} > end_line {end_line}",
        )
    )
    return out


def finite_rules(columns: Iterable[str], nullable: Iterable[str] = ()) -> list[Rule]:
    """Finite numbers; a column in `nullable` may also be null."""
    nullable = set(nullable)
    out = []
    for c in columns:
        col = pl.col(c)
        bad = ~col.is_finite() if c in nullable else col.is_null() | ~col.is_finite()
        out.append(Rule(c, bad, f"{c} {{value}} is not a finite number"))
    return out


def grade_rules(grades: Sequence[int], column: str = "rel") -> list[Rule]:
    col = pl.col(column)
    allowed = sorted(set(int(g) for g in grades))
    shown = f"{allowed[0]}..{allowed[-1]}" if allowed == list(range(allowed[0], allowed[-1] + 1)) else str(allowed)
    return [
        Rule(
            column, col.is_null() | ~col.is_in(allowed), f"{column} {{value}} is outside the configured grades {shown}"
        )
    ]


def configured_grades() -> tuple[int, ...]:
    """The relevance grades qrels may hold: config `judging.grades` (declared and validated by
    `settings.JudgingSpec` wherever the chain loads its config), from the packaged lens.yaml
    with `LENS_CONFIG` merged over it. Read here without the config model (pydantic costs
    `lens-eval score` ~0.3 s of CPU at start-up): the one-line form lens.yaml uses is read
    directly, any other form with the YAML parser."""
    return _configured_grades(os.environ.get("LENS_CONFIG") or None)


@functools.lru_cache(maxsize=8)
def _configured_grades(override: str | None) -> tuple[int, ...]:
    grades: object = DEFAULT_GRADES
    for src in [_PACKAGED_CONFIG] + ([Path(override)] if override else []):
        try:
            text = src.read_text()
        except OSError as e:
            raise SchemaError(f"{src}: cannot read the config ({e.strerror})") from None
        found = _grades_line(text)
        if found is None:  # not the one-line form: the YAML parser decides
            found = _grades_yaml(src, text)
        if found is not _ABSENT:
            grades = found
    if not (isinstance(grades, (list, tuple)) and grades and all(type(g) is int for g in grades)):
        raise SchemaError(f"config judging.grades: expected a non-empty list of integers, got {grades!r}")
    return tuple(grades)


_ABSENT = object()
# `judging:` at the top level, then its indented lines; `grades: [0, 1, 2, 3]` among them.
_JUDGING = re.compile(r"^judging:[ \t]*(?:#[^\n]*)?\n((?:(?:[ \t]+[^\n]*|[ \t]*(?:#[^\n]*)?)\n)*)", re.M)
_GRADES = re.compile(r"^[ \t]+grades:[ \t]*\[([-0-9, \t]*)\][ \t]*(?:#[^\n]*)?$", re.M)


def _grades_line(text: str) -> object | None:
    """`judging.grades` read from the config's text when it is written as lens.yaml writes it
    (a flow list of integers on one line) or absent; None when the YAML parser must decide (a
    file not in that plain form). Spares the score command the YAML parser (~40 ms)."""
    if "grades" not in text:
        return _ABSENT if "judging" not in text else None
    block = _JUDGING.search(text + "\n")
    if block is None or text.count("grades") != 1 or text.count("judging") != 1:
        return None
    m = _GRADES.search(block.group(1))
    if m is None:
        return None
    try:
        return [int(x) for x in m.group(1).split(",") if x.strip()]
    except ValueError:
        return None


def _grades_yaml(src: Path, text: str) -> object:
    import yaml  # lazy: only for a config not in the plain one-line form

    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except yaml.YAMLError as e:
        raise SchemaError(f"{src}: cannot read the config ({e})") from None
    judging = data.get("judging") if isinstance(data, dict) else None
    return judging["grades"] if isinstance(judging, dict) and "grades" in judging else _ABSENT


_PACKAGED_CONFIG = Path(__file__).resolve().parents[1] / "config" / "lens.yaml"


# The contract of each table (column names as the tables spell them).
def hits_rules(
    keys: Sequence[str] = ("run_id", "system", "qid"), ids: Sequence[str] | None = None, score: bool = True
) -> list[Rule]:
    """A hits table's rules (`score` False: all but the score's, checked apart)."""
    ids = (*keys, "repo", "path") if ids is None else ids
    return [*id_rules(ids), *rank_rules(keys), *span_rules(), *(finite_rules(["score"]) if score else [])]


def qrels_rules(grades: Sequence[int]) -> list[Rule]:
    return [*id_rules(("qid", "repo", "path")), *span_rules(), *grade_rules(grades)]


def latency_rules(nullable_lat: bool = True) -> list[Rule]:
    lat, sla = pl.col("lat_ms"), pl.col("sla_ms")
    return [
        *finite_rules(["lat_ms"], nullable=["lat_ms"] if nullable_lat else []),
        Rule("lat_ms", lat < 0, "lat_ms {value} is negative"),
        *finite_rules(["sla_ms"]),
        Rule("sla_ms", sla <= 0, "sla_ms {value} is not > 0"),
    ]


def agg_rules() -> list[Rule]:
    keys = ("run_id", "system", "qid")
    return [
        *id_rules(keys),
        Rule(
            "qid",
            ~pl.struct(list(keys)).is_first_distinct(),
            "duplicate row for (run_id, system, qid) = ({run_id!r}, {system!r}, {qid!r})",
        ),
        *latency_rules(),
        *finite_rules(["cpu_ms"]),
    ]


def record_rules() -> list[Rule]:
    """A raw-run record (`req_ts` still epoch milliseconds, `cpu_ms` from its cost)."""
    ts = pl.col("req_ts")
    return [
        *id_rules(("run_id", "system", "qid")),
        *finite_rules(["req_ts"]),
        Rule("req_ts", (ts < 0) | (ts >= EPOCH_MS_MAX), "req_ts {value} is not epoch milliseconds in 1970..9999"),
        *latency_rules(),
        *finite_rules(["cost.cpu_ms"]),
    ]


def shard_rules() -> list[Rule]:
    return finite_rules(
        ["issued_ts", "first_byte_ts", "done_ts", "cancel_ts"], nullable=["first_byte_ts", "done_ts", "cancel_ts"]
    )


# ---------------------------------------------------------------------------------------------
# Where: the one-line error of each kind of file
# ---------------------------------------------------------------------------------------------
def why_problem(why: Sequence[object], reasons: Sequence[str]) -> str | None:
    """Why a hit's `why` list breaks the contract, or None: a non-empty list of known `reasons`,
    or exactly `[WHY_UNKNOWN]` (a source that reports no reasons)."""
    if not why:
        return f"is empty: a non-empty subset of {list(reasons)} (or [{WHY_UNKNOWN!r}] when not reported)"
    if WHY_UNKNOWN in why:
        return None if len(why) == 1 else f"{WHY_UNKNOWN!r} must be alone, got {list(why)}"
    bad = [w for w in why if w not in reasons]
    return f"unknown reason(s) {bad}; allowed {list(reasons)}" if bad else None


def some_hit_unflagged(flags: Iterable[pa.Array | pa.ChunkedArray]) -> bool:
    """Whether some hit carries none of the reason flags (the fast ingestion paths then step
    aside: the exact path tells `[]`, refused, from `["unknown"]`, accepted)."""
    cols = list(flags)
    if not cols or not len(cols[0]):
        return False
    import pyarrow.compute as pc  # lazy: ~30 ms of every command's start-up (issue 19 speed)

    anyf = cols[0]
    for c in cols[1:]:
        anyf = pc.or_(anyf, c)
    return not pc.all(anyf).as_py()


def at_line(path: str | os.PathLike, line: int, msg: str, field: str | None = None) -> SchemaError:
    """A text file's error: `file:line: [field 'f':] msg` (line 1-based)."""
    what = f" field {field!r}:" if field else ""
    return SchemaError(f"{path}:{line}:{what} {msg}")


def at_row(path: str | os.PathLike, row: int, column: str, msg: str) -> SchemaError:
    """A Parquet file's error: `file: row N column C: msg` (row 1-based)."""
    return SchemaError(f"{path}: row {row} column {column}: {msg}")


# ---------------------------------------------------------------------------------------------
# Streaming check of a Parquet table: every row, every column of the contract, bounded memory
# ---------------------------------------------------------------------------------------------
# rows decoded at a time by `parquet_violation` (2^18: ~30 MB more held on 4.9 M hits, no faster)
PARQUET_BATCH_ROWS = 1 << 17
HITS_BOOL_COLUMNS = ("why_lex", "why_struct", "why_sem", "in_sla")


def parquet_hits_rules() -> list[Rule]:
    """The row rules of a Parquet hits file, all of them but rank uniqueness (which
    `parquet_violation` checks across batches): ids, rank, span, finite score, shard >= 0 or
    null, reason flags and in_sla present."""
    shard = pl.col("shard")
    return [
        *id_rules(("run_id", "system", "qid", "repo", "path")),
        *rank_rules(("run_id", "system", "qid"), known_unique=True),
        *span_rules(),
        *finite_rules(["score"]),
        Rule("shard", shard < 0, "shard {value} is not >= 0"),
        *[Rule(c, pl.col(c).is_null(), f"{c} is null") for c in HITS_BOOL_COLUMNS],
    ]


def _duplicate_row(path: Path, keys: Sequence[str], column: str) -> int | None:
    """The first row (0-based, file order) whose (`keys`, `column`) repeats an earlier row's:
    DuckDB, with a memory limit (it spills to disk), for a layout the streaming screen could not
    vouch for."""
    import tempfile

    import duckdb  # lazy: only for a file whose rankings are not stored in rank order

    part = ", ".join(f'"{k}"' for k in (*keys, column))
    with tempfile.TemporaryDirectory(prefix="lens-unique-") as tmp:
        con = duckdb.connect(config={"memory_limit": "512MB", "temp_directory": tmp, "threads": 2})
        try:
            row = con.execute(
                f"SELECT min(rn) FROM (SELECT file_row_number AS rn, row_number() OVER (PARTITION BY {part} "
                "ORDER BY file_row_number) AS k FROM read_parquet(?, file_row_number = true)) WHERE k > 1",
                [str(path)],
            ).fetchone()
        finally:
            con.close()
    return None if row is None or row[0] is None else int(row[0])


@functools.lru_cache(maxsize=1)
def _provable() -> dict[tuple[str, str], tuple[str, Rule]]:
    """The rules of `parquet_hits_rules` that row-group statistics can prove, by (column,
    message): (kind, the rule itself). The finite score is not among them (NaN is not in the
    statistics)."""
    out: dict[tuple[str, str], tuple[str, Rule]] = {}
    for r in parquet_hits_rules():
        m = r.message
        kind = (
            "blank"
            if m == f"{r.column} is empty or null"
            else "nonnull"
            if m == f"{r.column} is null"
            else "min1"
            if m == f"{r.column} {{value}} is not >= 1"
            else "min0"
            if m == f"{r.column} {{value}} is not >= 0"
            else "max31"
            if m.endswith("is past 2^31-1")
            else "inverted"
            if m.startswith("inverted span")
            else None
        )
        if kind is not None:
            out[(r.column, m)] = (kind, r)
    return out


def _kind(rule: Rule) -> str | None:
    """The kind of a rule of `parquet_hits_rules` that statistics can prove ("blank",
    "nonnull", "min1", "min0", "max31", "inverted"), when `rule` is that rule exactly (the same
    column, message and expressions); else None."""
    found = _provable().get((rule.column, rule.message))
    if found is None:
        return None
    kind, ref = found
    if rule.prepare or (rule.screen is None) != (ref.screen is None) or not ref.bad.meta.eq(rule.bad):
        return None
    if rule.screen is not None and not ref.screen.meta.eq(rule.screen):
        return None
    return kind


def _proven(rule: Rule, stats: dict) -> bool:
    """Whether a row group's statistics (`stats`: column -> pyarrow Statistics or None) prove
    that none of its rows breaks `rule`. Only the kinds of `parquet_hits_rules` (`_kind`) are
    ever proven; a string minimum is a lower bound (also where a writer truncates it), nulls
    are counted."""
    kind = _kind(rule)
    if kind is None:
        return False
    s = stats.get(rule.column)
    if s is None or not s.has_null_count:
        return False

    def ints(x) -> bool:
        return x.has_min_max and type(x.min) is int and type(x.max) is int

    if kind == "blank":
        return s.null_count == 0 and s.has_min_max and isinstance(s.min, str) and s.min >= "!"
    if kind == "nonnull":
        return s.null_count == 0
    if kind == "min1":
        return s.null_count == 0 and ints(s) and s.min >= 1
    if kind == "min0":
        return ints(s) and s.min >= 0
    if kind == "max31":
        return ints(s) and s.max <= MAX_LINE_NUMBER
    o = stats.get("start_line")  # inverted: every start_line <= every end_line
    return o is not None and ints(o) and ints(s) and o.max <= s.min


def _constant(s) -> str | None:
    """A string column's one value in a row group, when its statistics prove it (no null,
    min == max), else None."""
    if s is None or not s.has_null_count or s.null_count or not s.has_min_max:
        return None
    return s.min if isinstance(s.min, str) and s.min == s.max else None


def _as_polars(batch: pa.RecordBatch, names: Sequence[str]) -> pl.DataFrame:
    """Columns `names` of a batch as polars reads the file (dictionary columns decoded).

    Arrow to polars through record batches only: polars' conversion of a single Arrow array,
    and Arrow's own cast and take, import pyarrow.compute (~50-70 ms, holding the GIL, in the
    middle of `lens-eval score`'s check; issue 19 speed)."""
    df = pl.from_arrow(batch.select(list(names)))
    return df.with_columns(pl.col(pl.Categorical).cast(pl.String))


def _series(col: pa.Array) -> pl.Series:
    """One Arrow array as a polars Series (through a record batch: see `_as_polars`)."""
    return pl.from_arrow(pa.RecordBatch.from_arrays([col], names=["_"])).to_series()


def _dictionary_blank(col: pa.Array) -> bool:
    """The `id_rules` screen for a dictionary-decoded string column: some index is null, or
    some dictionary value is empty or starts with a byte <= 0x20 (used or not). False: no value
    of the column is null, empty or blank."""
    return bool(col.null_count) or maybe_blank(col.dictionary)


_MIX = np.uint64(0x100000001B3)  # combines the key columns' hashes (a collision only sends the file to the exact check)


def _value_hashes(values: pl.Series) -> np.ndarray:
    """A 64-bit hash of each value, by value (as a string), whatever array it came from."""
    return values.cast(pl.String).hash(seed=0).to_numpy()


def _screen_unique_arrow(
    batch: pa.RecordBatch,
    consts: dict[str, str],
    keys: Sequence[str],
    col: str,
    starts: set[int],
    last: list,
    dictionaries: dict | None = None,
) -> bool:
    """True when `col` is surely unique within `keys` over
    the batches so far (each key's rows together, `col` rising within them; `last`: [key,
    value] of the previous batch's last row, updated; `starts`: one 64-bit hash per key,
    updated). Keys are compared by value (dictionary indices: equal indices are equal values;
    unequal ones count as a new key, so a dictionary with a value twice can only send the file
    to the exact check); a key in `consts` is that value on every row. False: check exactly.

    A key's hash combines its columns' hashes by value: a dictionary column's come from its
    dictionary, hashed once per dictionary (`dictionaries`: kept by the caller across batches),
    then taken by index at the rows where a key starts; nothing is gathered or cast per row
    (issue 19, speed of `lens-eval score`'s check)."""
    n = batch.num_rows
    rank = batch.column(col)
    if rank.null_count or not (pa.types.is_integer(rank.type) or pa.types.is_floating(rank.type)):
        return False
    v = _series(rank).to_numpy()  # (pyarrow.to_numpy imports pandas)
    same = np.ones(max(n - 1, 0), dtype=bool)
    cols: list[tuple[str, object]] = []  # per key: ("const", value), ("dict", (indices, array)) or ("plain", series)
    for k in keys:
        if k in consts:
            cols.append(("const", consts[k]))
            continue
        a = batch.column(k)
        if a.null_count:
            return False
        if pa.types.is_dictionary(a.type):
            ids = _series(a.indices).to_numpy()
            same &= ids[1:] == ids[:-1]
            cols.append(("dict", (ids, a)))
        else:
            s = _series(a)
            same &= (s.slice(1) == s.slice(0, n - 1)).to_numpy()
            cols.append(("plain", s))
    if not (same <= (v[1:] > v[:-1])).all():  # within a key, col rises
        return False
    cache = {} if dictionaries is None else dictionaries

    def key_at(i: int) -> tuple:  # the key of row i, as strings
        out = []
        for kind, c in cols:
            if kind == "const":
                out.append(c)
            elif kind == "dict":
                out.append(str(c[1][i].as_py()))
            else:
                out.append(str(c[i]))
        return tuple(out)

    def hashes(rows: np.ndarray) -> np.ndarray:  # the keys' hashes at `rows`
        acc = np.zeros(rows.size, dtype=np.uint64)
        for (kind, c), k in zip(cols, keys):
            if kind == "const":
                h = np.full(rows.size, _value_hashes(pl.Series([c]))[0], dtype=np.uint64)
            elif kind == "dict":
                ids, a = c
                d = a.dictionary
                hit = cache.get(k)
                if hit is None or not hit[0].equals(d):
                    hit = cache[k] = (d, _value_hashes(_series(d)))
                h = hit[1][ids[rows]]
            else:
                h = _value_hashes(c.gather(rows))
            acc = (acc * _MIX) ^ h
        return acc

    first = key_at(0)
    first_same = last[0] is not None and first == last[0]
    if first_same and not v[0] > last[1]:
        return False
    new = np.flatnonzero(np.concatenate(([not first_same], ~same)))
    heads = hashes(new).tolist()
    if len(set(heads)) != len(heads) or not starts.isdisjoint(heads):
        return False
    starts.update(heads)
    last[0] = key_at(n - 1)
    last[1] = v[-1]
    return True


def parquet_violation(
    path: str | os.PathLike,
    rules: Sequence[Rule],
    columns: Sequence[str],
    unique: tuple[Sequence[str], str, str] | None = None,
    batch_rows: int = PARQUET_BATCH_ROWS,
) -> tuple[int, str, str] | None:
    """The first row of a Parquet file that breaks the contract: `(row, column, message)` (row
    1-based), or None. Streaming: `batch_rows` rows at a time, a row group at a time, every
    row, so memory is bounded by a batch, whatever the file's size. A rule of
    `parquet_hits_rules` that the row group's column statistics prove (no null and a minimum
    of at least "!" for an id, no null for a flag, min(rank) >= 1, max(line) <= 2^31-1,
    min(shard) >= 0, ...) is not evaluated there, and the columns only such rules read are not
    decoded; the rest are checked row by row, vectorised over Arrow batches (a NaN score is
    never in the statistics). A string column stored dictionary-encoded is read as its
    dictionary (the id rule screened on the dictionary's values). A batch where a rule may
    fire is read again as polars reads the file and checked with every rule and column, so the
    row, column and message are those of the whole contract. `unique = (keys, column,
    message)`: `column` unique within `keys` over the whole file, screened as the batches go by
    (each key's rows together with `column` rising, across batch boundaries: one 64-bit hash
    kept per key, not per row; a key column constant in a row group by its statistics is not
    decoded); a file laid out otherwise is checked exactly after the pass, in DuckDB (bounded
    memory, spills to disk)."""
    import pyarrow.parquet as papq  # lazy: pyarrow.parquet, for Parquet inputs only

    try:
        return _parquet_violation(papq, Path(path), rules, list(columns), unique, batch_rows)
    finally:  # the batches' memory back to the system before the metrics read the file
        pa.default_memory_pool().release_unused()


# Column chunks read through a 1 MiB buffer, not whole (pyarrow's default pre-buffers every column
# chunk of the row group: on 4.9 M hits in one row group, ~40 MB held for the check; issue 19).
_STREAMING = {"pre_buffer": False, "buffer_size": 1 << 20}


def _parquet_violation(papq, path: Path, rules, columns, unique, batch_rows) -> tuple[int, str, str] | None:
    pf = papq.ParquetFile(path, **_STREAMING)
    meta = pf.metadata
    names = [meta.schema.column(j).name for j in range(meta.num_columns)]
    arrow = pf.schema_arrow
    strings = {f.name for f in arrow if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)} & set(names)
    readers: dict[frozenset, papq.ParquetFile] = {frozenset(): pf}
    offset = 0
    starts: set[int] = set()
    last: list = [None, None]  # the previous batch's last row: its key and value
    dictionaries: dict = {}  # the key columns' dictionary hashes (`_screen_unique_arrow`)
    exact = False
    keys, col, _ = unique if unique is not None else ((), "", "")
    for g in range(meta.num_row_groups):  # a row group at a time, in batches: the reader decodes no more
        rg = meta.row_group(g)
        if rg.num_rows == 0:
            continue
        stats = {}
        for c in columns:
            try:
                stats[c] = rg.column(names.index(c)).statistics if c in names else None
            except Exception:  # unreadable statistics: prove nothing from them
                stats[c] = None
        open_rules = [r for r in rules if not _proven(r, stats)]
        consts: dict[str, str] = {}
        need = set()
        if unique is not None and not exact:
            consts = {k: v for k in keys if (v := _constant(stats.get(k))) is not None}
            need |= {k for k in keys if k not in consts} | {col}
        dict_cols = frozenset(c for c in strings if c in columns and rg.column(names.index(c)).has_dictionary_page)
        on_dict = [r for r in open_rules if r.column in dict_cols and _kind(r) == "blank"]
        rest = [r for r in open_rules if r not in on_dict]
        rest_cols = [
            c
            for c in columns
            if c
            in {n for r in rest for e in (r.bad, r.screen, *r.prepare) if e is not None for n in e.meta.root_names()}
        ]
        need |= set(rest_cols) | {r.column for r in on_dict}
        read = [c for c in columns if c in need] + sorted(need - set(columns))
        if not read:
            offset += rg.num_rows
            continue
        use = dict_cols & set(read)
        if use not in readers:
            readers[use] = papq.ParquetFile(path, read_dictionary=sorted(use), **_STREAMING)
        for batch in readers[use].iter_batches(batch_size=batch_rows, row_groups=[g], columns=read, use_threads=False):
            if batch.num_rows == 0:
                continue
            suspect = any(_dictionary_blank(batch.column(r.column)) for r in on_dict)
            if not suspect and rest:
                try:
                    suspect = first_violation(_as_polars(batch, rest_cols), rest) is not None
                except Exception:  # a rule these columns cannot serve: the whole contract decides
                    suspect = True
            if suspect:  # the whole contract on this batch, read as polars reads the file
                full = pl.scan_parquet(path).select(columns).slice(offset, batch.num_rows)
                full = full.with_columns(pl.col(pl.Categorical).cast(pl.String)).collect()  # Arrow dictionaries
                v = first_violation(full, rules)
                if v is not None:
                    return offset + v.row + 1, v.column, v.message
            if unique is not None and not exact:
                exact = not _screen_unique_arrow(batch, consts, keys, col, starts, last, dictionaries)
            offset += batch.num_rows
    if exact:
        keys, col, message = unique
        row = _duplicate_row(path, keys, col)
        if row is not None:
            value = pl.scan_parquet(path).select(col).slice(row, 1).collect()[col][0]
            return row + 1, col, message.format(value=value)
    return None


# ---------------------------------------------------------------------------------------------
# Streaming checks of a text file, before it is parsed
# ---------------------------------------------------------------------------------------------
def prescan_lines(
    path: str | os.PathLike,
    fd: int | None = None,
    *,
    max_line: int,
    utf8: bool,
    kind: str = "text",
) -> int:
    """Read a text file in chunks (bounded memory, nothing kept) and refuse, naming the line,
    a C0 control byte other than tab/LF/CR (a NUL-filled or binary file is not {kind}), a
    line longer than `max_line` bytes and, with `utf8`, bytes that are not UTF-8. Returns the
    number of lines (a last line without a newline counts). `fd`: an open descriptor (read
    with pread, its position left alone)."""
    own = fd is None
    if own:
        fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        lineno, line_start, pos = 1, 0, 0
        decoder = codecs.getincrementaldecoder("utf-8")() if utf8 else None

        def where(i: int, nl: np.ndarray) -> tuple[int, int]:  # (line, 1-based byte in it) of chunk byte i
            before = nl[nl < i]
            start = pos + int(before[-1]) + 1 if len(before) else line_start
            return lineno + len(before), pos + i - start + 1

        while pos < size:
            chunk = os.pread(fd, min(_READ, size - pos), pos)
            if not chunk:
                break
            arr = np.frombuffer(chunk, dtype=np.uint8)
            bad = _CONTROL[arr]
            nl = np.flatnonzero(arr == 10)
            if bad.any():
                i = int(np.argmax(bad))
                line, byte = where(i, nl)
                raise at_line(path, line, f"not {kind}: control byte 0x{arr[i]:02x} at byte {byte} of the line")
            if decoder is not None:
                pending = len(decoder.getstate()[0])  # bytes of a sequence cut by the last chunk
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as e:
                    line, byte = where(max(e.start - pending, 0), nl)
                    raise at_line(path, line, f"not UTF-8 (byte {byte} of the line: {e.reason})") from None
            starts = np.concatenate(([line_start], pos + nl + 1))
            ends = np.concatenate((pos + nl, [pos + len(chunk)]))  # the last one: the line so far
            over = np.flatnonzero(ends - starts > max_line)
            if len(over):
                raise at_line(path, lineno + int(over[0]), f"line longer than {max_line:,} bytes")
            lineno += len(nl)
            line_start = int(starts[-1])
            pos += len(chunk)
        if decoder is not None:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError as e:
                raise at_line(path, lineno, f"not UTF-8 ({e.reason} at the end of the file)") from None
        return lineno - (1 if line_start == size else 0)
    finally:
        if own:
            os.close(fd)


def count_newlines(fd: int, end: int) -> int:
    """Newlines in bytes [0, end) of an open file, read in chunks (bounded memory). Holes of a
    sparse file (zeros, no newline) are skipped where the system says where they are."""
    n, pos = 0, 0
    here = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        while pos < end:
            stop = end
            if hasattr(os, "SEEK_DATA"):
                try:
                    pos = os.lseek(fd, pos, os.SEEK_DATA)
                    stop = min(end, os.lseek(fd, pos, os.SEEK_HOLE))
                except OSError as e:  # ENXIO: nothing but a hole after pos; otherwise no support: read it all
                    if e.errno == errno.ENXIO:
                        break
            while pos < stop:
                chunk = os.pread(fd, min(_READ, stop - pos), pos)
                if not chunk:
                    return n
                n += chunk.count(b"\n")
                pos += len(chunk)
    finally:
        os.lseek(fd, here, os.SEEK_SET)
    return n


def output_dir_problem(out: str | os.PathLike) -> str | None:
    """Why `out` cannot be (or be created as) a directory, or None: it, or one of its
    parents, is an existing file."""
    p = Path(out)
    for a in (p, *p.parents):
        if a.exists() or a.is_symlink():
            if not a.is_dir():
                return f"{a}: exists and is not a directory" if a == p else f"{p}: {a} is not a directory"
            return None
    return None
