"""One system's hits as the per-ranking metrics read them (SPEC §4): the rows of rank <=
MAX_RANK and the columns the metrics use, streamed in batches, and a read that starts ahead of
its use (issue 19, speed of `lens-eval score`).

Why this is a module of its own: it imports polars and nothing else of the product, so
`lens-eval score` can start decoding the first system's hits before it imports the rest
(pyarrow, the contract, the metrics: ~0.1 s of a one-second command on two cores, during which
the second core would otherwise be idle). `lens_core.measures.metrics` builds on it.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import polars as pl

MAX_RANK = 50  # hits past this rank earn no credit in any metric of the contract (SPEC §4)
HIT_COLS = ["qid", "rank", "repo", "path", "start_line", "end_line", "in_sla"]  # the columns the metrics use
HIT_CHUNK_ROWS = 1 << 20  # rows of hits per chunk of whole queries, about (issue 19: memory and speed)
HIT_BATCH_ROWS = 1 << 19  # rows per batch of the streaming read; a chunk joins batches without copying them


def system_hits(hits: pl.DataFrame | pl.LazyFrame, run_id: str, system: str, extra: Sequence[str] = ()):
    """One (run_id, system)'s hits of rank <= MAX_RANK: the columns the metrics use, then `extra`."""
    return hits.filter(
        (pl.col("run_id") == run_id) & (pl.col("system") == system) & (pl.col("rank") <= MAX_RANK)
    ).select(HIT_COLS + [c for c in extra if c not in HIT_COLS])


class ReadAhead(NamedTuple):
    """One system's hits already being read: `key` (run_id, system), `batches` (`read_ahead`)."""

    key: tuple[str, str]
    batches: Iterator[pl.DataFrame]


def batches(hs: pl.LazyFrame) -> Iterator[pl.DataFrame]:
    """A lazy read of hits, started: its batches of about HIT_BATCH_ROWS rows, in file order."""
    return iter(hs.collect_batches(chunk_size=min(HIT_BATCH_ROWS, HIT_CHUNK_ROWS), maintain_order=True))


def read_ahead(hits: pl.LazyFrame, run_id: str, system: str) -> ReadAhead:
    """Start reading one system's hits (`system_hits`) now, in the background: Polars' streaming
    engine starts on `collect_batches`, decoding with its own threads while the caller goes on
    (reading the qrels, ...). Hand it to `metrics.hit_metrics(ahead=...)`, which takes its
    batches instead of starting that system's read itself (issue 19, speed: on a Parquet file
    of one row group the first batch waits for the whole group to be decoded)."""
    return ReadAhead((run_id, system), batches(system_hits(hits, run_id, system)))


def cast_batches(ahead: ReadAhead, types: dict[str, pl.DataType]) -> ReadAhead:
    """The same read, each batch's columns cast to `types` where they differ (a read started
    before the schema guard reads the file's own types; the guard has checked that every value
    fits the contract's type by the time a batch is used)."""

    def cast(b: pl.DataFrame) -> pl.DataFrame:
        change = [pl.col(c).cast(t) for c, t in types.items() if c in b.schema and b.schema[c] != t]
        return b.with_columns(change) if change else b

    return ReadAhead(ahead.key, (cast(b) for b in ahead.batches))
