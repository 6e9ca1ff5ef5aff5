"""Where runs come from (SPEC §1): `sim` (the seeded simulator), `local` (the bundled
reference engine on loopback) or `prod` (LENS_ENDPOINTS with AUTH_TOKEN). The assets only
see this resource's two questions: which queries, and what did a system answer."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from lens_core.settings import data_source, load_config, sla_ms
from lens_core.simulator import Simulator
from lens_core.systems import SystemConfig


class LensDataSource(dg.ConfigurableResource):
    """The data source of a weekly run. Empty fields take the environment / YAML config."""

    source: str = Field("", description="sim | local | prod; empty = $DATA_SOURCE (default sim)")
    seed: int = Field(-1, description="simulator seed; -1 = run.seed from the config")
    queries_per_suite: int = Field(0, description="simulator queries per suite; 0 = config")
    sla_ms: float = Field(0.0, description="per-query deadline; 0 = $SLA_MS (default 150)")

    def resolved_source(self) -> str:
        if self.source:
            os.environ.setdefault("DATA_SOURCE", self.source)
            return self.source
        return data_source()

    def resolved_sla_ms(self) -> float:
        return self.sla_ms or sla_ms()

    def _simulator(self) -> Simulator:
        cfg = load_config()
        spec = cfg.sim
        if self.queries_per_suite:
            spec = spec.model_copy(update={"queries_per_suite": self.queries_per_suite})
        return Simulator(spec, seed=cfg.run.seed if self.seed < 0 else self.seed)

    def _unsupported(self, src: str) -> RuntimeError:
        return RuntimeError(
            f"DATA_SOURCE={src}: this build collects from the simulator only; "
            "the Lens HTTP client and the reference engine are wired in by the `local`/`prod` data source"
        )

    def suites(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(queries, ground_truth) for the run."""
        src = self.resolved_source()
        if src == "sim":
            sim = self._simulator()
            return sim.queries, sim.ground_truth
        raise self._unsupported(src)

    def collect(self, system: SystemConfig, queries: pl.DataFrame, run_id: str, t0_ms: float,
                k: int) -> list[dict[str, Any]]:
        """Raw-run records of one system over the queries."""
        src = self.resolved_source()
        if src == "sim":
            return self._simulator().run(system, run_id, queries, self.resolved_sla_ms(), k, t0_ms)
        raise self._unsupported(src)

    def describe(self) -> dict[str, Any]:
        """For the attestation: the source and its endpoints, never a token."""
        src = self.resolved_source()
        out: dict[str, Any] = {"source": src, "sla_ms": self.resolved_sla_ms()}
        if src == "sim":
            cfg = load_config()
            out["seed"] = cfg.run.seed if self.seed < 0 else self.seed
        elif src == "prod":
            out["endpoints"] = [e.strip() for e in os.environ.get("LENS_ENDPOINTS", "").split(",") if e.strip()]
        return out
