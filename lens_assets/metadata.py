"""UI metadata helpers: row counts, column schema (with each column's description from
`contracts.COLUMN_DOCS`), headline tables, markdown previews, embedded PNGs (CI whiskers) and
links."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pyarrow as pa

from lens_core.common.contracts import COLUMN_DOCS
from lens_core.monitor.monitoring import plot_ci_whiskers


def column_schema(schema: pa.Schema | pl.Schema) -> dg.TableSchema:
    """The table's columns with their types and descriptions (contracts.COLUMN_DOCS)."""
    if isinstance(schema, pa.Schema):
        named = [(f.name, str(f.type)) for f in schema]
    else:
        named = [(n, str(t)) for n, t in schema.items()]
    return dg.TableSchema(columns=[dg.TableColumn(name=n, type=t, description=COLUMN_DOCS.get(n)) for n, t in named])


def file_url(path: str | Path) -> dg.MetadataValue:
    """A clickable link to a local file (the UI renders a url entry as a link; a path entry is
    only copyable text)."""
    return dg.MetadataValue.url(Path(path).absolute().as_uri())


def ci_whiskers_markdown(scores: pl.DataFrame, title: str = "", metrics: tuple[str, ...] | None = None) -> str:
    """Each system's headline metrics with their 95% CIs (slice all) as an embedded PNG; a line
    saying why when there are no scores."""
    kw = {"metrics": metrics} if metrics else {}
    try:
        with tempfile.TemporaryDirectory(prefix="lens-whiskers-") as tmp:
            png = plot_ci_whiskers(scores, Path(tmp) / "ci_whiskers.png", title=title, **kw)
            return png_markdown(png, "95% CI whiskers")
    except (ValueError, KeyError, pl.exceptions.PolarsError) as err:
        return f"_no CI whiskers: {err}_"


def markdown_table(df: pl.DataFrame, max_rows: int = 20, float_fmt: str = "{:.4f}") -> str:
    if df.height == 0:
        return "_(empty)_"
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for row in df.head(max_rows).iter_rows():
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append(float_fmt.format(v))
            elif isinstance(v, list):
                cells.append(", ".join(map(str, v[:5])) + ("…" if len(v) > 5 else ""))
            else:
                cells.append(str(v).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    if df.height > max_rows:
        lines.append(f"\n_{df.height - max_rows} more rows_")
    return "\n".join(lines)


def table_metadata(
    df: pl.DataFrame,
    schema: pa.Schema | None = None,
    headline: str | None = None,
    preview: pl.DataFrame | None = None,
    **extra: Any,
) -> dict[str, Any]:
    md: dict[str, Any] = {
        "dagster/row_count": df.height,
        "dagster/column_schema": column_schema(schema if schema is not None else df.schema),
    }
    if headline:
        md["headline"] = dg.MetadataValue.md(headline)
    if preview is not None:
        md["preview"] = dg.MetadataValue.md(markdown_table(preview))
    for k, v in extra.items():
        md[k] = v
    return md


def png_markdown(path: str | Path, alt: str = "") -> str:
    """Markdown embedding a PNG as a data URI (what the Dagster UI renders in metadata)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"![{alt}](data:image/png;base64,{data})"


def pngs_markdown(pngs: dict[str, Path], limit: int = 12) -> str:
    """Several named PNGs, each under its name (at most `limit`)."""
    return "\n\n".join(f"**{name}**\n\n{png_markdown(p, name)}" for name, p in list(pngs.items())[:limit])
