"""UI metadata helpers: row counts, column schema, headline tables, markdown previews."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pyarrow as pa


def column_schema(schema: pa.Schema | pl.Schema) -> dg.TableSchema:
    if isinstance(schema, pa.Schema):
        cols = [dg.TableColumn(name=f.name, type=str(f.type)) for f in schema]
    else:
        cols = [dg.TableColumn(name=n, type=str(t)) for n, t in schema.items()]
    return dg.TableSchema(columns=cols)


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
