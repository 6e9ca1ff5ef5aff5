"""Where runs come from (SPEC §1): `sim` (the seeded simulator), `local` (the bundled reference
engine on loopback) or `prod` (LENS_ENDPOINTS with AUTH_TOKEN). The assets only see this
resource's questions: which queries (`suites()`), what did a system answer (`collect()`), and
what to put in the attestation (`describe()`).

`local` and `prod` share one client (`lens_core.collect.client`); only who starts the server
differs.

`local`:
* `suites()`: the reference engine's suites (SPEC §11), built with the `lens_engine` Python API
  from the same corpus and cache (`lens_core.common.settings.cache_dir()`) the server loads;
  deterministic (seed `suite_seed`, default 0: the seed the engine warms its query vectors
  with). Cap: `max_per_suite` / env `LENS_MAX_PER_SUITE`, either one number for every suite
  or `suite=n` pairs (`nl=0,identifier=150,*=150`; `*` = every other suite; 0 = whole).
  Default `DEFAULT_MAX_PER_SUITE` (`nl=0,*=150`): the NL suite stays whole (its hard-NL slice
  needs >= 200 queries; the default 4200-function corpus has 547 NL queries, 214 hard-NL) and
  the identifier (1143) and structural (1852) suites are capped at 150 each: 847 queries x 9
  systems = ~7600 HTTP queries, ~80 queries/s at concurrency 4 against the engine's two worker
  processes on 2 cores, so the warm weekly run fits in 3 minutes. `LENS_MAX_PER_SUITE=0` runs every query (~3500 per system).
* `collect_week()` (issue 17): every system of the week over the same queries, INTERLEAVED
  (`lens_core.collect.interleave`: per block of `collect.block` queries the systems' order is
  shuffled with a recorded seed; one shared pool of `concurrency` workers), each raw run
  streamed to its file. `collect.interleave: false` (or `sim`) collects one system after
  another through `collect()`; the simulator's runs are unchanged.
* `collect()`: `collect_run` against an `EngineServer` started lazily on the first call and
  stopped by `teardown_after_execution` (Dagster calls it after the run's last step, also when a
  step failed) or by `close()` / the context manager outside Dagster. Dagster's in-process
  executor (`materialize`, `execute_in_process`, `lens-eval run`) initialises a resource once per
  run, so ONE engine serves every step; under the multiprocess executor each step process gets
  its own resource, so each step that collects starts (and stops) its own engine (only
  `raw_runs` collects; `suites()` never needs the server). Client: concurrency `concurrency` /
  env `LENS_CLIENT_CONCURRENCY` (default 4), deadline `SLA_MS`, hedging off unless `hedge`
  (the engine-side tail taming is part of each system's configuration, not the client's).
  Token: `LENS_ENGINE_TOKEN` (what the engine checks) or else `AUTH_TOKEN`; never logged.

`prod`:
* endpoints from `LENS_ENDPOINTS`; the run is collected from the FIRST endpoint (the others are
  listed in `describe()` and are fail-over candidates for an operator; one run = one endpoint,
  so all systems are measured against the same deployment). Token from `AUTH_TOKEN`.
* suites from `LENS_SUITES` (a Parquet file with the QUERIES_SCHEMA columns) and, optionally,
  ground truth from `LENS_GROUND_TRUTH` (GROUND_TRUTH_SCHEMA columns); without it the ground
  truth is empty and judging relies on merged human qrels.

An endpoint that cannot be reached fails `collect()` with ONE `LensUnreachable` message.
`describe()` never contains a token: endpoints are printed without credentials.

Why this is one module: it is the one Dagster resource that answers the assets' three questions
(which queries, what did each system answer, what to attest) for the three sources; the suite
caps, the query-file reading and the engine's lifecycle exist only to answer them, and the
sources share their clients, their settings and the engine they start.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import dagster as dg
import polars as pl
from pydantic import Field, PrivateAttr

from lens_core.collect.client import LensClient, LensUnreachable, collect_run, endpoints_from_env
from lens_core.collect.interleave import build_clients, collect_interleaved, derive_seed
from lens_core.collect.rawruns import write_raw_run
from lens_core.common.contracts import GROUND_TRUTH_SCHEMA, QUERIES_SCHEMA
from lens_core.common.hashing import sha256_hex
from lens_core.common.settings import cache_dir, data_source, env_number, load_config, sla_ms
from lens_core.common.systems import SystemConfig
from lens_core.ingest.ndjson import ingest
from lens_core.sim.simulator import Simulator
from lens_engine.corpus import build_corpus, default_roots, env_max_functions
from lens_engine.index import DEFAULT_SHARDS, index_key
from lens_engine.launcher import EngineServer
from lens_engine.suites import build_suites

log = logging.getLogger(__name__)

DEFAULT_MAX_PER_SUITE = "nl=0,*=150"
DEFAULT_CONCURRENCY = 4  # measured in the demo: 6 gave no more throughput on 2 cores and +15-20 ms p95


# ---------------------------------------------------------------------------------------------
# Suite caps
# ---------------------------------------------------------------------------------------------
def parse_suite_caps(spec: str | int | None) -> dict[str, int | None]:
    """`"250"` -> {"*": 250}; `"nl=0,*=250"` -> {"nl": None, "*": 250} (None / 0 = whole suite)."""
    if spec is None:
        return {"*": None}
    text = str(spec).strip()
    if not text:
        return {"*": None}
    caps: dict[str, int | None] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            name, value = "*", part
        name = name.strip()
        try:
            n = int(value)
        except ValueError:
            raise ValueError(
                f"LENS_MAX_PER_SUITE={text!r}: {part!r} is not `n` or `suite=n` with an integer n"
            ) from None
        if n < 0 or not name:
            raise ValueError(f"LENS_MAX_PER_SUITE={text!r}: {part!r}: caps are integers >= 0 (0 = whole suite)")
        caps[name] = n or None
    caps.setdefault("*", None)
    return caps


def cap_suites(
    queries: pl.DataFrame, ground_truth: pl.DataFrame, caps: dict[str, int | None], seed: int = 0
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Keep, per suite, the first `cap` queries in a seeded hash order of their qids (stable
    across machines, independent of row order); ground truth follows the kept qids."""
    if all(v is None for v in caps.values()):
        return queries, ground_truth
    keys = [sha256_hex(f"lens-cap:{seed}:{q}".encode()) for q in queries["qid"].to_list()]
    order = queries.with_columns(pl.Series("_h", keys, dtype=pl.String)).sort(["suite", "_h", "qid"])
    rank = pl.int_range(pl.len()).over("suite")
    cap_expr = pl.col("suite").replace_strict(
        {s: (c if c is not None else 1 << 62) for s, c in caps.items() if s != "*"},
        default=caps.get("*") if caps.get("*") is not None else 1 << 62,
        return_dtype=pl.Int64,
    )
    kept = order.filter(rank < cap_expr).drop("_h").sort("qid")
    gt = ground_truth.filter(pl.col("qid").is_in(kept["qid"].implode()))
    return kept, gt


def _schema(arrow_schema) -> pl.Schema:
    return pl.Schema(pl.from_arrow(arrow_schema.empty_table()).schema)


def read_query_file(path: str | os.PathLike, arrow_schema, what: str, env: str) -> pl.DataFrame:
    """A Parquet table with (at least) the columns of `arrow_schema`, cast to it; clear errors."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{env}={path}: no such file (expected a Parquet file of {what})")
    try:
        df = pl.read_parquet(p)
    except Exception as e:  # polars raises several types for a non-Parquet file
        raise ValueError(f"{env}={path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    want = _schema(arrow_schema)
    missing = [c for c in want if c not in df.columns]
    if missing:
        raise ValueError(f"{env}={path}: {what} lacks column(s) {missing} (has {df.columns})")
    try:
        df = df.select([pl.col(c).cast(t, strict=True) for c, t in want.items()])
    except Exception as e:
        raise ValueError(f"{env}={path}: {what} has a column of the wrong type ({e})") from None
    for c in want:
        n_null = df[c].null_count()
        if n_null:
            raise ValueError(f"{env}={path}: column {c!r} has {n_null} null value(s)")
    return df


# ---------------------------------------------------------------------------------------------
# The resource
# ---------------------------------------------------------------------------------------------
class LensDataSource(dg.ConfigurableResource):
    """The data source of a weekly run. Empty fields take the environment / YAML config."""

    source: str = Field("", description="sim | local | prod; empty = $DATA_SOURCE (default sim)")
    seed: int = Field(-1, description="simulator seed; -1 = run.seed from the config")
    queries_per_suite: int = Field(0, description="simulator queries per suite; 0 = config")
    sla_ms: float = Field(0.0, description="per-query deadline; 0 = $SLA_MS (default 150)")
    max_per_suite: str = Field(
        "",
        description="local: queries per suite, `n` or `suite=n,...,*=n` "
        "(0 = whole); empty = $LENS_MAX_PER_SUITE or "
        f"{DEFAULT_MAX_PER_SUITE}",
    )
    suite_seed: int = Field(0, description="local: seed of the engine's suites (0 = the engine's warm set)")
    concurrency: int = Field(
        0, description=f"local/prod: client concurrency; 0 = $LENS_CLIENT_CONCURRENCY or {DEFAULT_CONCURRENCY}"
    )
    hedge: bool = Field(False, description="local/prod: client-side hedged probes (off by default)")

    _server: Any = PrivateAttr(default=None)
    _corpus: Any = PrivateAttr(default=None)
    _clients: dict = PrivateAttr(default_factory=dict)
    _describe_cache: Any = PrivateAttr(default=None)
    _logger: Any = PrivateAttr(default=None)

    # -- settings -----------------------------------------------------------------------------
    def resolved_source(self) -> str:
        if self.source:
            os.environ.setdefault("DATA_SOURCE", self.source)
            return self.source
        return data_source()

    def resolved_sla_ms(self) -> float:
        return self.sla_ms or sla_ms()

    def resolved_suite_caps(self) -> dict[str, int | None]:
        return parse_suite_caps(self.max_per_suite or os.environ.get("LENS_MAX_PER_SUITE") or DEFAULT_MAX_PER_SUITE)

    def resolved_concurrency(self) -> int:
        if self.concurrency:
            return self.concurrency
        return env_number("LENS_CLIENT_CONCURRENCY", int, minimum=1, default=DEFAULT_CONCURRENCY)

    # -- lifecycle ----------------------------------------------------------------------------
    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Nothing heavy here: the engine starts on the first collect() (after engine_index has
        # built the caches), so a run that never collects never starts it.
        self._logger = context.log

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def close(self) -> None:
        """Stop the engine if this resource started one (idempotent)."""
        srv, self._server = self._server, None
        self._clients.clear()
        if srv is not None:
            srv.stop()

    def __enter__(self) -> "LensDataSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def engine_server(self):
        """The running EngineServer of `local` (None until the first collect())."""
        return self._server

    # -- sim ----------------------------------------------------------------------------------
    def _simulator(self) -> Simulator:
        cfg = load_config()
        spec = cfg.sim
        if self.queries_per_suite:
            spec = spec.model_copy(update={"queries_per_suite": self.queries_per_suite})
        return Simulator(spec, seed=cfg.run.seed if self.seed < 0 else self.seed)

    # -- local --------------------------------------------------------------------------------
    def _engine_corpus(self):
        if self._corpus is None:
            self._corpus = build_corpus(cache_dir=cache_dir())
        return self._corpus

    def _local_suites(self) -> tuple[pl.DataFrame, pl.DataFrame]:

        corpus = self._engine_corpus()
        q, g = build_suites(corpus, seed=self.suite_seed)
        return cap_suites(q, g, self.resolved_suite_caps(), seed=self.suite_seed)

    def _ensure_server(self):
        if self._server is None:
            mf = env_max_functions()
            srv = EngineServer(cache_dir(), max_functions=0 if mf is None else mf, logger=self._logger)
            srv.start()
            self._server = srv
        elif not self._server.running():
            srv, self._server = self._server, None
            tail = srv.log_tail()
            srv.stop()
            raise LensUnreachable(f"the reference engine (log {srv.log_path}) is no longer running:\n{tail}")
        return self._server

    # -- prod ---------------------------------------------------------------------------------
    @staticmethod
    def _prod_suites() -> tuple[pl.DataFrame, pl.DataFrame]:
        path = os.environ.get("LENS_SUITES", "").strip()
        if not path:
            raise ValueError(
                "DATA_SOURCE=prod needs LENS_SUITES: a Parquet file of queries with columns "
                f"{list(_schema(QUERIES_SCHEMA))} (and optionally LENS_GROUND_TRUTH)"
            )
        q = read_query_file(path, QUERIES_SCHEMA, "the query suites", "LENS_SUITES")
        if q["qid"].n_unique() != q.height:
            raise ValueError(f"LENS_SUITES={path}: duplicate qids")
        gpath = os.environ.get("LENS_GROUND_TRUTH", "").strip()
        if gpath:
            g = read_query_file(gpath, GROUND_TRUTH_SCHEMA, "the ground truth", "LENS_GROUND_TRUTH")
            g = g.filter(pl.col("qid").is_in(q["qid"].implode()))
        else:
            log.warning("DATA_SOURCE=prod without LENS_GROUND_TRUTH: ground truth is empty")
            g = pl.DataFrame(schema=_schema(GROUND_TRUTH_SCHEMA))
        return q, g

    # -- the client ---------------------------------------------------------------------------
    @staticmethod
    def _token(src: str) -> str | None:
        """`local`: what the engine checks (`LENS_ENGINE_TOKEN`) or else `AUTH_TOKEN`; `prod`:
        `AUTH_TOKEN`. Never logged."""
        if src == "local":
            return os.environ.get("LENS_ENGINE_TOKEN") or os.environ.get("AUTH_TOKEN") or None
        return os.environ.get("AUTH_TOKEN") or None

    def client(self, k: int | None = None) -> LensClient:
        """The Lens client of `local` (starting the engine if needed) or `prod`."""
        src = self.resolved_source()
        k = int(k or load_config().run.k)
        if src == "local":
            srv = self._ensure_server()
            key = ("local", srv.endpoint, k)
            endpoint = srv.endpoint
            token = self._token(src)
        elif src == "prod":
            eps = endpoints_from_env()
            if not eps:
                raise ValueError("DATA_SOURCE=prod needs LENS_ENDPOINTS (comma-separated Lens base URLs)")
            endpoint = eps[0]
            key = ("prod", endpoint, k)
            token = self._token(src)
        else:
            raise ValueError(f"DATA_SOURCE={src}: the simulator has no client")
        c = self._clients.get(key)
        if c is None:
            cfg = load_config()
            c = LensClient(
                endpoint,
                token=token,
                sla_ms=self.resolved_sla_ms(),
                k=k,
                seed=cfg.run.seed,
                concurrency=self.resolved_concurrency(),
                hedge=self.hedge,
            )
            self._clients[key] = c
        return c

    def system_client(self, system: SystemConfig, k: int | None = None) -> LensClient:
        """The client of one system: `client(k)` for a system on the default endpoint with the
        default response shape, else one client per (endpoint, repo, path_prefix)."""
        base = self.client(k)
        if not (system.endpoint or system.repo or system.path_prefix):
            return base
        src = self.resolved_source()
        # the raw default URL (the printable `base.endpoint` drops any user:password@)
        default = self._server.endpoint if src == "local" else endpoints_from_env()[0]
        endpoint = system.endpoint or default
        key = (src, endpoint, base.k, system.repo, system.path_prefix)
        c = self._clients.get(key)
        if c is None:
            token = self._token(src)  # the same credentials as the default client
            c = LensClient(
                endpoint,
                token=token,
                sla_ms=self.resolved_sla_ms(),
                k=base.k,
                seed=base.seed,
                concurrency=self.resolved_concurrency(),
                hedge=self.hedge,
                repo=system.repo,
                path_prefix=system.path_prefix,
            )
            self._clients[key] = c
        return c

    def _engine_exited(self, what: str) -> LensUnreachable | None:
        """`local`: the engine died under us -> the message that says so (None otherwise)."""
        srv = self._server
        if self.resolved_source() == "local" and srv is not None and srv.wait_exited(5.0):
            self._server = None
            srv.stop()
            return LensUnreachable(
                f"the reference engine (log {srv.log_path}) is no longer running "
                f"(it exited while serving {what}):\n{srv.log_tail()}"
            )
        return None

    # -- the three questions -------------------------------------------------------------------
    def suites(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(queries, ground_truth) for the run."""
        src = self.resolved_source()
        if src == "sim":
            sim = self._simulator()
            return sim.queries, sim.ground_truth
        if src == "local":
            return self._local_suites()
        if src == "prod":
            return self._prod_suites()
        raise ValueError(f"DATA_SOURCE={src!r}: expected sim, local or prod")

    def collect(
        self, system: SystemConfig, queries: pl.DataFrame, run_id: str, t0_ms: float, k: int
    ) -> list[dict[str, Any]]:
        """Raw-run records of one system over the queries. `t0_ms` is the simulator's clock;
        `local`/`prod` record the real wall-clock request times."""
        src = self.resolved_source()
        if src == "sim":
            return self._simulator().run(system, run_id, queries, self.resolved_sla_ms(), k, t0_ms)
        client = self.system_client(system, k)
        try:
            return collect_run(
                client, queries, system.name, run_id, cfg_hash=system.cfg_hash, progress=True, extra=system.params
            )
        except LensUnreachable:
            died = self._engine_exited(system.name)
            if died is not None:
                raise died from None
            raise

    def collect_week(
        self,
        systems: Sequence[SystemConfig],
        queries: pl.DataFrame,
        run_id: str,
        t0_ms: float,
        k: int,
        paths: Mapping[str, Path],
        *,
        interleave: bool | None = None,
    ) -> dict[str, Any]:
        """Collect every system of the week and write each raw run to `paths[name]`.

        `local`/`prod`: interleaved (`collect.interleave`, default true; `interleave` overrides
        it): every system answers the same query close in time, sharing one pool of the client
        concurrency, in an order shuffled per block of `collect.block` queries with the seed
        `collect.seed` (default: derived from `run.seed` and the run id). `sim`, or interleave
        off: one system after another through `collect()` (the simulator's runs are unchanged).

        Returns {order, seed, block, concurrency, systems: {name: {path, sha256, records,
        errors}}} (`order`: interleaved | sequential; seed/block None when sequential)."""
        src = self.resolved_source()
        cfg = load_config()
        spec = cfg.collect
        on = spec.interleave if interleave is None else interleave
        if src == "sim" or not on:
            infos: dict[str, Any] = {}
            for i, system in enumerate(systems, start=1):
                t = time.monotonic()
                records = self.collect(system, queries, run_id, t0_ms, k)
                info = write_raw_run(paths[system.name], records)
                info["errors"] = sum(1 for r in records if r["error"])
                infos[system.name] = info
                log.info(
                    "[%d/%d] %s: %d queries, %d errors, %.1fs",
                    i,
                    len(systems),
                    system.name,
                    info["records"],
                    info["errors"],
                    time.monotonic() - t,
                )
            conc = None if src == "sim" else self.resolved_concurrency()
            return {"order": "sequential", "seed": None, "block": None, "concurrency": conc, "systems": infos}
        seed = spec.seed if spec.seed is not None else derive_seed(cfg.run.seed or 0, run_id)
        clients = build_clients(systems, lambda s: self.system_client(s, k))
        try:
            return collect_interleaved(
                systems,
                clients,
                queries,
                run_id,
                paths,
                block=spec.block,
                seed=seed,
                concurrency=self.resolved_concurrency(),
                window=spec.window,
                progress=True,
            )
        except LensUnreachable:
            died = self._engine_exited(f"{len(systems)} systems interleaved")
            if died is not None:
                raise died from None
            raise

    def source_roots(self) -> dict[str, tuple[Path, str]]:
        """Where the code of each repo can be read (for the judging queue's code column):
        `local` — the reference engine's corpus roots; `prod` — `LENS_SOURCE_ROOT/<repo>`
        when set; `sim` — none (its spans are not real code)."""
        src = self.resolved_source()
        if src == "local":
            return {repo: (Path(root), prefix) for repo, root, prefix, _ in default_roots()}
        root = os.environ.get("LENS_SOURCE_ROOT", "").strip()
        if src == "prod" and root and Path(root).is_dir():
            return {p.name: (p, "") for p in Path(root).iterdir() if p.is_dir()}
        return {}

    def describe(self) -> dict[str, Any]:
        """For the attestation: the source and its endpoints, never a token."""
        src = self.resolved_source()
        out: dict[str, Any] = {"source": src, "sla_ms": self.resolved_sla_ms()}
        if src == "sim":
            cfg = load_config()
            out["seed"] = cfg.run.seed if self.seed < 0 else self.seed
        elif src == "prod":
            # the printable form drops user:password@ and query strings
            eps = []
            for e in endpoints_from_env():
                try:
                    eps.append(LensClient(e).endpoint)
                except ValueError:
                    eps.append("<invalid endpoint>")
            out["endpoints"] = eps
            out["collected_from"] = eps[0] if eps else None
            out["suites_file"] = os.environ.get("LENS_SUITES") or None
            out["ground_truth_file"] = os.environ.get("LENS_GROUND_TRUTH") or None
            out["client"] = {"concurrency": self.resolved_concurrency(), "hedge": self.hedge}
        elif src == "local":
            if self._describe_cache is None:
                corpus = self._engine_corpus()
                mf = env_max_functions()
                self._describe_cache = {
                    "engine": "lens_engine reference engine on loopback (started by the pipeline)",
                    "corpus_digest": corpus.digest,
                    "manifest_sha256": corpus.digest,  # the manifest file's sha256 is the digest
                    "functions": len(corpus.units),
                    "files": corpus.files,
                    "packages": len(corpus.packages),
                    "languages": corpus.languages(),
                    "max_functions": 0 if mf is None else mf,
                    "index_key": index_key(corpus, DEFAULT_SHARDS, True),
                    "suite_seed": self.suite_seed,
                    "max_per_suite": {k: (v or 0) for k, v in self.resolved_suite_caps().items()},
                }
            out.update(self._describe_cache)
            out["client"] = {"concurrency": self.resolved_concurrency(), "hedge": self.hedge}
        return out


# ---------------------------------------------------------------------------------------------
# Parity: the simulator and the HTTP ingestor write the same records
# ---------------------------------------------------------------------------------------------
def ingestion_parity(
    queries: pl.DataFrame,
    system: SystemConfig,
    client: LensClient,
    workdir: str | os.PathLike,
    run_id: str = "parity",
    simulator: Simulator | None = None,
    t0_ms: float = 0.0,
    k: int | None = None,
) -> pl.DataFrame:
    """Collect `queries` for `system` through the simulator and through `client`, write both
    with `write_raw_run`, ingest both with `lens_core.ingest.ndjson.ingest`, and compare `agg` rows per
    qid. Returns `qid, sim_rows, http_rows, match` (one row per qid of either side, sorted);
    parity holds when `match` is true everywhere. Files go under `workdir/{sim,http}/`."""

    if simulator is None:
        cfg = load_config()
        simulator = Simulator(cfg.sim, seed=cfg.run.seed)
    k = int(k or client.k)
    work = Path(workdir)
    sim_records = simulator.run(system, run_id, queries, client.sla_ms, k, t0_ms)
    http_records = collect_run(client, queries, system.name, run_id, cfg_hash=system.cfg_hash, progress=False)
    counts = []
    for side, records in (("sim", sim_records), ("http", http_records)):
        path = work / side / f"{system.name}.ndjson"
        write_raw_run(path, records)
        agg, _ = ingest([path])
        counts.append(pl.from_arrow(agg).group_by("qid").len().rename({"len": f"{side}_rows"}))
    out = (
        counts[0]
        .join(counts[1], on="qid", how="full", coalesce=True)
        .with_columns(pl.col("sim_rows").fill_null(0).cast(pl.Int64), pl.col("http_rows").fill_null(0).cast(pl.Int64))
    )
    return out.with_columns((pl.col("sim_rows") == pl.col("http_rows")).alias("match")).sort("qid")
