"""The weekly calibration step (SPEC §6): fit per cell on the qid split, report each cell on
its held-out half, check export parity, and write the bundle's `calibration/` directory:
one JSON export per calibrator (+ index.json), calibration.parquet (the cell report),
parity.parquet, and reliability diagrams (PNG) per system and per cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from lens_core.calibrate.calibration import CalibratorSet, calibrate, parity_cells, qid_split
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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cals, report = calibrate(labelled, min_labels=min_labels, gate=gate, seed=seed, shared=shared)
    cals.write(out_dir)
    parity = parity_cells(cals, labelled)
    write_parquet(report, out_dir / "calibration.parquet")
    write_parquet(parity, out_dir / "parity.parquet")
    # Reliability diagrams on the held-out half with the calibrated confidences.
    held = labelled.filter(
        ~pl.Series(
            qid_split(labelled["qid"], salt=cals.params.get("split_salt"))
            if cals.params.get("split_salt")
            else qid_split(labelled["qid"])
        )
    )
    conf = cals.apply_frame(held, score_col="score")
    held = held.with_columns(pl.Series("conf", conf))
    system_pngs: dict[str, Path] = {}
    for (system,), part in sorted(held.group_by(["system"]), key=lambda kv: kv[0]):
        p = out_dir / f"reliability_{_slug(system)}.png"
        reliability_diagram(part["conf"].to_numpy(), part["label"].to_numpy(), f"{system} (held-out)", p)
        system_pngs[system] = p
        if cell_diagrams:
            cells = [
                (f"{intent} · {language}", cell["conf"].to_numpy(), cell["label"].to_numpy())
                for (intent, language), cell in sorted(part.group_by(["intent", "language"]), key=lambda kv: kv[0])
            ]
            reliability_grid(
                cells, f"{system}: reliability per cell (held-out)", out_dir / f"reliability_{_slug(system)}__cells.png"
            )
    return CalibrationRun(cals, report, parity, out_dir, system_pngs)


def mean_confidence(labelled: pl.DataFrame, cals: CalibratorSet) -> pl.DataFrame:
    """Mean calibrated confidence per system (the canary's confidence-shift input)."""
    conf = cals.apply_frame(labelled, score_col="score")
    return labelled.with_columns(pl.Series("conf", np.asarray(conf))).group_by("system").agg(pl.col("conf").mean())
