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
only. `first_violation` returns the first bad row in table order.
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
def at_line(path: str | os.PathLike, line: int, msg: str, field: str | None = None) -> SchemaError:
    """A text file's error: `file:line: [field 'f':] msg` (line 1-based)."""
    what = f" field {field!r}:" if field else ""
    return SchemaError(f"{path}:{line}:{what} {msg}")


def at_row(path: str | os.PathLike, row: int, column: str, msg: str) -> SchemaError:
    """A Parquet file's error: `file: row N column C: msg` (row 1-based)."""
    return SchemaError(f"{path}: row {row} column {column}: {msg}")


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
