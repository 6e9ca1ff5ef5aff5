"""`lens-eval`: the command line. It sits at the top of the import graph, beside the code
location's `definitions.py`: it drives the pure core (score, compare, verify, judge) and launches
the Dagster jobs (`run`)."""


def entry() -> None:
    """`lens-eval ...` (the console script) and `python -m lens_cli ...`: one start-up for both.

    `trec` starts in `lens_cli.trec` without importing `lens_cli.main` (polars and the other
    commands' parsers): on files the C reader takes, the process imports numpy and nothing
    heavier (issue 19, speed). Before anything is imported, the environment of the libraries
    that read it once, at load: no BLAS threads for `trec` and `score` (no BLAS there; ~50 ms of
    numpy's import), and for `score` polars' allocator (jemalloc, through the two settings polars
    documents, read when polars loads; a user's own value of either is kept):
    - `_RJEM_MALLOC_CONF=dirty_decay_ms:100,muzzy_decay_ms:0,narenas:1` (appended to polars'
      defaults): freed pages go back to the system after 100 ms instead of polars' 0.5 s + 1 s,
      so the memory of the hits' decoding is not still held when pyarrow (another allocator)
      writes the outputs; and one arena for every thread instead of four per CPU, so the threads'
      freed memory is reused by the others rather than held per arena;
    - `POLARS_THP=1`: jemalloc asks the kernel for transparent huge pages (where the kernel's
      THP mode is `madvise` or `always`), a fault per 2 MiB instead of per 4 KiB (~150k page
      faults, ~0.3 s of system time, on 48,768 queries x 100 hits).
    Together, on 48,768 queries x 100 hits (int64 shape, rounds of 10, interleaved): wall -14%
    (paired median), peak RSS 514 MB median (528 max) against 515 (525) without them; huge pages
    alone cost ~55 MB of peak RSS (567, 585 max), one arena alone saves ~15 MB (issue 19).
    Across several systems' hits huge pages keep the earlier systems' memory (peak RSS 460 ->
    760-925 MB on 4-8 systems of 48,768 queries, ~490-510 without them, and no faster): `score`
    turns them off once it knows the file holds more than one system (`HUGE_PAGES_OURS`)."""
    global HUGE_PAGES_OURS
    import os
    import sys

    command = sys.argv[1:2]
    if command in (["trec"], ["score"]):
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if command == ["score"]:
        os.environ["_RJEM_MALLOC_CONF"] = _score_allocator(os.environ.get("_RJEM_MALLOC_CONF"))
        if "POLARS_THP" not in os.environ:
            os.environ["POLARS_THP"] = "1"
            HUGE_PAGES_OURS = True
    if command == ["trec"]:
        from lens_cli.trec import entry as run  # lazy: trec alone, after the environment is set
    else:
        from lens_cli.main import entry as run  # lazy: polars reads the environment set above at import
    run()


SCORE_JEMALLOC = "dirty_decay_ms:100,muzzy_decay_ms:0,narenas:1"  # `entry`: polars' allocator for `score`
# True once `entry` has asked for huge pages itself (not the user): `score` turns them off again
# for a file of several systems (`lens_cli.main._huge_pages_off`).
HUGE_PAGES_OURS = False
# What polars itself writes into `_RJEM_MALLOC_CONF` when it is imported (its defaults, then its
# huge pages settings with POLARS_THP=1, then the value it found there): a process launched by
# a Python process that had imported polars (a notebook, a Dagster step, a benchmark harness)
# inherits it, and it is not a user's choice.
_POLARS_JEMALLOC = ("dirty_decay_ms:500,muzzy_decay_ms:1000", ",thp:always,metadata_thp:always")


def _score_allocator(inherited: str | None) -> str:
    """`_RJEM_MALLOC_CONF` for `score`: SCORE_JEMALLOC, unless the environment holds a user's
    own value, which is kept as it is. Polars' own defaults written there by a parent process
    are no one's choice: they are dropped, and what a user had set before them comes after
    SCORE_JEMALLOC (jemalloc takes the last value of each setting)."""
    if inherited is None:
        return SCORE_JEMALLOC
    base, thp = _POLARS_JEMALLOC
    if not inherited.startswith(base):
        return inherited
    rest = inherited[len(base) :]
    rest = rest[len(thp) :] if rest.startswith(thp) else rest
    rest = rest.lstrip(",")
    return f"{SCORE_JEMALLOC},{rest}" if rest else SCORE_JEMALLOC
