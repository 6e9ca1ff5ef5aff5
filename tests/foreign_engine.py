"""A small foreign search engine for the declared-systems tests (issue 17): not the reference
engine, but a team's own, served on loopback with the SPEC §2 NDJSON wire format.

Corpus: the functions of a few CPython standard-library modules (real code, read with `ast`
from this interpreter's own library), one unit per function with its line span; docstrings
are not indexed. Suite: the first sentence of each docstring (>= 4 words) is a query whose
ground truth is that function's span (rel 3), CodeSearchNet style.

Search: BM25 (k1 1.2, b 0.75) over identifier-split, lower-cased tokens of each function's
name and body, split into `SHARDS` shards by path (each shard scored separately, then
merged). Parameters it honours: `model` (`bm25` default, or `tf`: raw term frequency), `k`.
Anything else (e.g. `trace`) is ignored, as a real engine ignores parameters it does not know.
The `done` line reports `cfg_hash` = first 16 hex of sha256("model=<model>"): the engine's own
configuration hash, which the declaration is reconciled against. Real timings (`lat_ms`,
per-shard timestamps, `cpu_ms` from thread CPU time).
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
import sysconfig
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import polars as pl

MODULES = (
    "textwrap.py",
    "json/decoder.py",
    "json/encoder.py",
    "csv.py",
    "shlex.py",
    "fractions.py",
    "statistics.py",
    "heapq.py",
    "bisect.py",
    "difflib.py",
    "calendar.py",
    "ipaddress.py",
    "string.py",
    "pprint.py",
    "argparse.py",
    "configparser.py",
    "tarfile.py",
    "zipfile/__init__.py",
)
REPO = "cpython"
SHARDS = 4
_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def tokens(text: str) -> list[str]:
    out = []
    for t in _TOKEN.findall(text):
        for seg in t.split("_"):
            out.extend(p.lower() for p in _PART.findall(seg) if len(p) > 1)
    return out


def _first_sentence(doc: str) -> str:
    para = " ".join(doc.strip().split("\n\n", 1)[0].split())
    m = re.search(r"(?<=[.!?])\s", para)
    return (para[: m.start()] if m else para).strip()


def build_corpus(max_queries: int = 200) -> tuple[list[dict], pl.DataFrame, pl.DataFrame]:
    """(units, queries, ground truth) from this interpreter's standard library."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    units: list[dict] = []
    queries, truth, seen = [], [], set()
    for rel in MODULES:
        path = lib / rel
        if not path.is_file():
            continue
        src = path.read_text(encoding="utf-8")
        lines = src.splitlines()
        for node in ast.walk(ast.parse(src)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node) or ""
            body = node.body[1:] if doc else node.body
            start = node.lineno
            end = node.end_lineno or start
            text_lines = lines[start - 1 : end]
            if doc and body:  # drop the docstring's lines from what is indexed
                first, last = node.body[0].lineno, node.body[0].end_lineno or node.body[0].lineno
                text_lines = lines[start - 1 : first - 1] + lines[last:end]
            u = {"repo": REPO, "path": rel, "start": start, "end": end, "name": node.name}
            u["tokens"] = tokens(node.name) * 2 + tokens("\n".join(text_lines))
            units.append(u)
            q = _first_sentence(doc) if doc else ""
            if len(q.split()) >= 4 and q not in seen and len(queries) < max_queries:
                seen.add(q)
                qid = "fe-" + hashlib.sha256(q.encode()).hexdigest()[:10]
                queries.append({"qid": qid, "text": q, "suite": "nl", "intent": "nl", "language": "python"})
                truth.append({"qid": qid, "repo": REPO, "path": rel, "start_line": start, "end_line": end, "rel": 3})
    return units, pl.DataFrame(queries), pl.DataFrame(truth)


class ForeignEngine:
    """BM25 over the units, sharded by path; `search` returns (hits, shard timings, cpu_ms)."""

    def __init__(self, units: list[dict]):
        self.units = units
        vocab: dict[str, int] = {}
        rows, cols, vals = [], [], []
        for i, u in enumerate(units):
            for t, c in Counter(u["tokens"]).items():
                rows.append(i)
                cols.append(vocab.setdefault(t, len(vocab)))
                vals.append(c)
        self.vocab = vocab
        n, v = len(units), len(vocab)
        self.tf = np.zeros((n, v), dtype=np.float32)
        self.tf[rows, cols] = vals
        self.dl = self.tf.sum(axis=1)
        df = (self.tf > 0).sum(axis=0)
        self.idf = np.log(1 + (n - df + 0.5) / (df + 0.5)).astype(np.float32)
        self.shard_of = np.array([int(hashlib.sha256(u["path"].encode()).hexdigest(), 16) % SHARDS for u in units])

    def search(self, q: str, k: int, model: str) -> tuple[list[dict], list[dict], float]:
        c0 = time.thread_time()
        ids = [self.vocab[t] for t in set(tokens(q)) if t in self.vocab]
        shards, scored = [], []
        for s in range(SHARDS):
            t_issue = time.time() * 1000.0
            rows = np.flatnonzero(self.shard_of == s)
            if ids:
                tf = self.tf[np.ix_(rows, ids)]
                if model == "tf":
                    sc = tf.sum(axis=1)
                else:
                    norm = 1.2 * (0.25 + 0.75 * self.dl[rows] / self.dl.mean())
                    sc = (self.idf[ids] * tf * 2.2 / (tf + norm[:, None])).sum(axis=1)
                scored.extend((float(x), int(r)) for x, r in zip(sc, rows) if x > 0)
            t_done = time.time() * 1000.0
            shards.append(
                {
                    "shard": s,
                    "probe_id": f"fe-{s}",
                    "issued_ts": t_issue,
                    "first_byte_ts": t_issue,
                    "done_ts": t_done,
                    "cancel_ts": None,
                    "status": "ok",
                }
            )
        scored.sort(key=lambda x: (-x[0], x[1]))
        hits = []
        for rank, (score, i) in enumerate(scored[:k], start=1):
            u = self.units[i]
            hits.append(
                {
                    "type": "hit",
                    "rank": rank,
                    "repo": u["repo"],
                    "path": u["path"],
                    "start_line": u["start"],
                    "end_line": u["end"],
                    "score": round(score - 1e-9 * rank, 9),
                    "why": ["lex"],
                    "shard": int(self.shard_of[i]),
                }
            )
        return hits, shards, (time.thread_time() - c0) * 1000.0


def config_hash(model: str) -> str:
    return hashlib.sha256(f"model={model}".encode()).hexdigest()[:16]


class ForeignServer:
    """`with ForeignServer(units) as srv:` serves /health and /search on 127.0.0.1:<port>."""

    def __init__(self, units: list[dict]):
        self.engine = ForeignEngine(units)
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                outer._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        t0 = time.time()
        parts = urlsplit(h.path)
        qs = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path == "/health":
            return self._json(h, 200, {"status": "ok", "engine": "foreign", "functions": len(self.engine.units)})
        if parts.path != "/search":
            return self._json(h, 404, {"error": "not_found", "detail": parts.path})
        model = qs.get("model", "bm25")
        if model not in ("bm25", "tf"):
            return self._json(h, 400, {"error": "bad model", "detail": model})
        with self._lock:
            self.requests.append({"q": qs.get("q"), "system": qs.get("system"), "params": dict(qs), "t": t0})
        hits, shards, cpu = self.engine.search(qs.get("q", ""), int(qs.get("k", "50")), model)
        done = {
            "type": "done",
            "lat_ms": round((time.time() - t0) * 1000.0, 3),
            "cfg_hash": config_hash(model),
            "shards": shards,
            "cost": {"probes": len(shards), "cpu_ms": round(cpu, 4)},
        }
        body = "".join(json.dumps(x) + "\n" for x in [*hits, done]).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/x-ndjson")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    @staticmethod
    def _json(h, status: int, obj) -> None:
        body = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def __enter__(self) -> "ForeignServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _smoke() -> None:  # pragma: no cover - manual check
    units, q, g = build_corpus()
    print(len(units), q.height, g.height, math.nan)


if __name__ == "__main__":  # pragma: no cover
    _smoke()
