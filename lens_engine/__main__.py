"""Command line of the reference engine.

python -m lens_engine corpus  --cache-dir D [--max-functions N]        JSON summary (digest, sizes)
python -m lens_engine suites  --cache-dir D --out DIR [--split test]   queries.parquet, ground_truth.parquet
python -m lens_engine index   --cache-dir D [--max-functions N]        build embeddings + indexes (cached)
python -m lens_engine serve   --host 127.0.0.1 --port 0 --cache-dir D  prints `LISTENING http://...`

`--max-functions` defaults to LENS_CORPUS_MAX_FUNCTIONS (4200); 0 = everything.
Progress and logs go to stderr; stdout carries only the result line(s).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from lens_core.common.hashing import atomic_path, sha256_file


def _corpus_kwargs(args) -> dict:
    kw = {}
    if args.max_functions is not None:
        kw["max_functions"] = args.max_functions if args.max_functions > 0 else None
    return kw


def _cmd_corpus(args) -> int:
    from lens_engine.corpus import (
        build_corpus,  # lazy: each subcommand loads only what it runs (the engine and index pull MiniLM)
    )

    c = build_corpus(cache_dir=args.cache_dir, **_corpus_kwargs(args))
    print(
        json.dumps(
            {
                "corpus_digest": c.digest,
                "files": c.files,
                "functions": len(c.units),
                "packages": len(c.packages),
                "languages": c.languages(),
            }
        )
    )
    return 0


def _cmd_suites(args) -> int:
    from lens_engine.corpus import (
        build_corpus,  # lazy: each subcommand loads only what it runs (the engine and index pull MiniLM)
    )
    from lens_engine.suites import (
        build_suites,  # lazy: each subcommand loads only what it runs (the engine and index pull MiniLM)
    )

    c = build_corpus(cache_dir=args.cache_dir, **_corpus_kwargs(args))
    q, g = build_suites(c, seed=args.seed, max_per_suite=args.max_per_suite, split=args.split)
    out = Path(args.out)
    result = {
        "corpus_digest": c.digest,
        "queries": q.height,
        "ground_truth": g.height,
        "by_intent": dict(q.group_by("intent").len().iter_rows()),
        "files": {},
    }
    for name, df in (("queries.parquet", q), ("ground_truth.parquet", g)):
        target = out / name
        with atomic_path(target, suffix=".parquet") as tmp:
            df.write_parquet(tmp, compression="zstd")
        result["files"][name] = sha256_file(target)
    print(json.dumps(result))
    return 0


def _cmd_index(args) -> int:
    from lens_engine.corpus import (
        build_corpus,  # lazy: each subcommand loads only what it runs (the engine and index pull MiniLM)
    )
    from lens_engine.index import (
        build_index,  # lazy: each subcommand loads only what it runs (the engine and index pull MiniLM)
    )

    t0 = time.monotonic()
    c = build_corpus(cache_dir=args.cache_dir, **_corpus_kwargs(args))
    ix = build_index(c, args.cache_dir, n_shards=args.shards, dense=not args.no_dense)
    print(
        json.dumps(
            {
                "corpus_digest": c.digest,
                "index_key": ix.key,
                "functions": len(c.units),
                "shards": ix.n_shards,
                "dense": ix.dense is not None,
                "seconds": round(time.monotonic() - t0, 1),
            }
        )
    )
    return 0


def default_workers() -> int:
    """Engine worker processes: LENS_ENGINE_WORKERS, default one per core (at most 4)."""
    from lens_core.common.settings import (
        env_number,  # lazy: each subcommand loads only what it runs (the engine and index pull MiniLM)
    )

    return env_number("LENS_ENGINE_WORKERS", int, minimum=1, strict=True, default=max(1, min(4, os.cpu_count() or 1)))


def _cmd_serve(args) -> int:
    """Load the engine once, listen, then fork `workers - 1` copies that accept on the same
    socket (pre-fork: a query is answered by whichever worker accepts it). The index is shared
    copy-on-write; each worker keeps its own shard-latency history, like a replica would."""
    from lens_engine.engine import (
        Engine,  # lazy: each subcommand loads only what it runs (the engine and index pull MiniLM)
    )
    from lens_engine.server import (
        make_server,  # lazy: each subcommand loads only what it runs (the engine and index pull MiniLM)
    )

    engine = Engine.load(args.cache_dir, n_shards=args.shards, dense=not args.no_dense, **_corpus_kwargs(args))
    workers = args.workers if args.workers is not None else default_workers()
    if workers < 1:
        raise ValueError(f"--workers {workers}: must be >= 1")
    server = make_server(engine, args.host, args.port, workers=workers)
    stop = threading.Event()

    def _term(signum, frame):
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    children: list[int] = []
    parent = os.getpid()
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:  # worker
            code = 0
            try:
                _worker_after_fork(server, parent, _term)
                server.serve_forever(poll_interval=0.1)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        children.append(pid)

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    print(f"LISTENING {server.url}", flush=True)
    logging.getLogger("lens_engine").info("serving with %d worker process(es)", workers)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5.0
        for pid in children:
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.05)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
        server.server_close()
        engine.close()
    return 0


def _worker_after_fork(server, parent: int, on_term) -> None:
    """In a forked worker: own signal handlers, no OpenMP pool inherited from the parent, and
    exit when the parent is gone (it owns the listening socket's lifecycle)."""
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    if "torch" in sys.modules:  # libgomp is not fork-safe once used: keep torch single-threaded
        sys.modules["torch"].set_num_threads(1)

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        server.shutdown()

    threading.Thread(target=watch_parent, daemon=True).start()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lens_engine", description="Lens reference engine")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--cache-dir", required=True, help="content-addressed cache directory")
        p.add_argument(
            "--max-functions",
            type=int,
            default=None,
            help="corpus cap by whole packages (default LENS_CORPUS_MAX_FUNCTIONS or 4200; 0 = all)",
        )
        p.add_argument("-v", "--verbose", action="store_true")

    p = sub.add_parser("corpus", help="build the corpus, print its digest and sizes")
    common(p)
    p = sub.add_parser("suites", help="write queries.parquet and ground_truth.parquet")
    common(p)
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="test", choices=["train", "dev", "test"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-per-suite", type=int, default=None)
    for name, help_ in (("index", "build embeddings and indexes (cached)"), ("serve", "serve /search on loopback")):
        p = sub.add_parser(name, help=help_)
        common(p)
        p.add_argument("--shards", type=int, default=8)
        p.add_argument("--no-dense", action="store_true", help="skip the dense arm")
        if name == "serve":
            p.add_argument("--host", default="127.0.0.1")
            p.add_argument("--port", type=int, default=0)
            p.add_argument(
                "--workers",
                type=int,
                default=None,
                help="worker processes (default LENS_ENGINE_WORKERS or one per core, at most 4)",
            )
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return {"corpus": _cmd_corpus, "suites": _cmd_suites, "index": _cmd_index, "serve": _cmd_serve}[args.cmd](args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"lens_engine {args.cmd}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
