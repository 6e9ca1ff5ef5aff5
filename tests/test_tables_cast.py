"""`tables.conform` narrows polars' large strings to the contract's strings itself (no
pyarrow.compute import in `lens-eval score`, issue 19 speed): the same arrays as Arrow's cast,
for chunked, sliced, null, empty and non-ASCII columns, and the same file bytes."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest

from lens_core.common.tables import _cast, write_parquet

CASES = {
    "empty": pl.Series("a", [], pl.String),
    "nulls": pl.Series("a", [None, None], pl.String),
    "empty strings": pl.Series("a", ["", ""], pl.String),
    "mixed": pl.Series("a", ["x", None, "", "é" * 3, "y" * 100]),
    "two chunks": pl.concat([pl.Series("a", ["a", "bb"]), pl.Series("a", [None, "ccc"])], rechunk=False),
    "sliced": pl.Series("a", ["é", "x" * 100, None, "z"]).slice(1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_narrowing_equals_arrows_cast(name):
    col = pl.DataFrame({"a": CASES[name]}).to_arrow().column("a")
    assert pa.types.is_large_string(col.type)
    for c in (col, col.slice(1), col.slice(0, max(len(col) - 1, 0))):
        got = _cast(c, pa.string())
        got.validate(full=True)
        assert got.type == pa.string() and got.equals(c.cast(pa.string()))


def test_arrow_arrays_without_a_data_buffer_and_other_casts():
    a = pa.chunked_array([pa.array([None, None], pa.large_string()), pa.array([], pa.large_string())])
    got = _cast(a, pa.string())
    got.validate(full=True)
    assert got.to_pylist() == [None, None]
    ints = pa.chunked_array([pa.array([1, 2], pa.int64())])
    assert _cast(ints, pa.int32()).type == pa.int32()  # everything else: Arrow's cast


def test_written_files_are_those_of_arrows_cast(tmp_path):
    df = pl.DataFrame({"s": CASES["mixed"], "n": [1, 2, 3, 4, 5]})
    schema = pa.schema([("s", pa.string()), ("n", pa.int64())])
    write_parquet(df, tmp_path / "ours.parquet", schema=schema)
    t = df.to_arrow()
    ref = pa.table([t.column("s").cast(pa.string()), t.column("n")], schema=schema)
    write_parquet(ref, tmp_path / "arrow.parquet", schema=schema)
    assert (tmp_path / "ours.parquet").read_bytes() == (tmp_path / "arrow.parquet").read_bytes()
