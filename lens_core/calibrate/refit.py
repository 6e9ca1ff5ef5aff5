"""The weekly calibration step (SPEC §6): fit per cell on the qid split, report each cell on
its held-out half, check export parity, and write the bundle's `calibration/` directory:
one JSON export per calibrator (+ index.json), calibration.parquet (the cell report),
parity.parquet, and reliability diagrams (PNG) per system and per cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from lens_core.calibrate.calibration import CalibratorSet, calibrate, cell_report, parity_cells, qid_split
from lens_core.calibrate.reliability import reliability_diagram, reliability_grid
from lens_core.common.tables import write_parquet


@dataclass
class CalibrationRun:
    calibrators: CalibratorSet
    report: pl.DataFrame
    parity: pl.DataFrame
    directory: Path
    system_pngs: dict[str, Path]


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "._=-" else "_" for c in s)


def run_calibration(
    labelled: pl.DataFrame,
    out_dir: Path,
    seed: int = 0,
    gate: float = 0.02,
    min_labels: int = 200,
    cell_diagrams: bool = True,
    shared: dict[str, str] | None = None,
) -> CalibrationRun:
    """labelled: system, qid, intent, language, score, label. `shared`: system -> the system
    whose calibrators it uses (the A/A twin -> its baseline; see `calibrate`)."""
    systems = sorted(set(labelled.get_column("system").to_list()))
    return run_calibration_by_system(
        systems,
        lambda s: labelled.filter(pl.col("system") == s),
        out_dir,
        seed=seed,
        gate=gate,
        min_labels=min_labels,
        cell_diagrams=cell_diagrams,
        shared=shared,
    )


def run_calibration_by_system(
    systems: list[str],
    labels_of: Callable[[str], pl.DataFrame],
    out_dir: Path,
    seed: int = 0,
    gate: float = 0.02,
    min_labels: int = 200,
    cell_diagrams: bool = True,
    shared: dict[str, str] | None = None,
) -> CalibrationRun:
    """`run_calibration` one system at a time (issue 22): `labels_of(system)` gives that
    system's labelled hits, and only one system's are held at once. The result is the one
    `run_calibration` gives on all of them together: every fit, report row, parity row and
    diagram depends on one system's rows only (the qid split is per qid, each cell's noise floor
    is seeded with `seed`); a system that shares another's calibrators (the A/A twin) is reported
    with its owner's, so owners come first."""
    shared = dict(shared or {})
    for twin, owner in shared.items():
        if twin == owner or owner in shared:
            raise ValueError(f"calibrate: shared {twin!r} -> {owner!r}: must name a system that fits its own")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    present = set(systems)
    order = [s for s in sorted(present) if s not in shared] + [s for s in sorted(present) if s in shared]
    sets: dict[str, CalibratorSet] = {}
    calibrators: dict = {}
    cells: dict = {}
    params: dict = {}
    reports, parities = [], []
    system_pngs: dict[str, Path] = {}
    for system in order:
        lab = labels_of(system)
        if system in shared:
            owner = shared[system]
            if owner not in sets:
                raise ValueError(f"calibrate: {system!r} shares the calibrators of {owner!r}, which has no labels")
            own = sets[owner]
            cs = CalibratorSet(own.calibrators, own.cells, {**own.params, "shared": {system: owner}})
            reports.append(cell_report(lab, cs, gate=gate, seed=seed))
        else:
            cs, report = calibrate(lab, min_labels=min_labels, gate=gate, seed=seed)
            sets[system] = cs
            calibrators.update(cs.calibrators)
            cells.update(cs.cells)
            params = dict(cs.params)
            reports.append(report)
            parities.append(parity_cells(cs, lab))
        system_pngs[system] = _diagrams(lab, cs, system, out_dir, cell_diagrams)
        del lab
    if shared:
        params["shared"] = shared
    cals = CalibratorSet(calibrators, cells, params)
    cals.write(out_dir)
    report = pl.concat(reports, how="vertical") if reports else pl.DataFrame()
    if report.height:
        report = report.sort("system", "intent", "language")
    parity = pl.concat(parities, how="vertical").sort("calibrator") if parities else pl.DataFrame()
    write_parquet(report, out_dir / "calibration.parquet")
    write_parquet(parity, out_dir / "parity.parquet")
    return CalibrationRun(cals, report, parity, out_dir, system_pngs)


def _diagrams(lab: pl.DataFrame, cals: CalibratorSet, system: str, out_dir: Path, cell_diagrams: bool) -> Path:
    """Reliability diagrams of one system on its held-out half with the calibrated confidences."""
    salt = cals.params.get("split_salt")
    held = lab.filter(~pl.Series(qid_split(lab["qid"], salt=salt) if salt else qid_split(lab["qid"])))
    held = held.with_columns(pl.Series("conf", cals.apply_frame(held, score_col="score")))
    p = out_dir / f"reliability_{_slug(system)}.png"
    reliability_diagram(held["conf"].to_numpy(), held["label"].to_numpy(), f"{system} (held-out)", p)
    if cell_diagrams:
        cells = [
            (f"{intent} · {language}", cell["conf"].to_numpy(), cell["label"].to_numpy())
            for (intent, language), cell in sorted(held.group_by(["intent", "language"]), key=lambda kv: kv[0])
        ]
        reliability_grid(
            cells, f"{system}: reliability per cell (held-out)", out_dir / f"reliability_{_slug(system)}__cells.png"
        )
    return p


def mean_confidence(labelled: pl.DataFrame, cals: CalibratorSet) -> pl.DataFrame:
    """Mean calibrated confidence per system (the canary's confidence-shift input)."""
    conf = cals.apply_frame(labelled, score_col="score")
    return labelled.with_columns(pl.Series("conf", np.asarray(conf))).group_by("system").agg(pl.col("conf").mean())
