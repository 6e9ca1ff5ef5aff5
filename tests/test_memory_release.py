"""Freed memory goes back to the operating system between the steps of one process (issue 22):
`lens_core.common.memory.release_memory`, called by the IO managers once per step before the
step reads its inputs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import dagster as dg
import polars as pl
import pytest
from upath import UPath

import resources.io_manager as iom
from lens_core.common.memory import _malloc_trim

# A process that fills the C heap with blocks below glibc's mmap threshold, frees all but the
# last (which pins the top of the heap, so the heap cannot shrink by itself), and prints its RSS
# before and after `release_memory()`.
_SCRIPT = textwrap.dedent(
    """
    import ctypes
    from lens_core.common.memory import release_memory

    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = []
    for _ in range(4000):  # 4000 x 64 KiB = 250 MiB on the heap, every page touched
        p = libc.malloc(64 * 1024)
        ctypes.memset(p, 1, 64 * 1024)
        blocks.append(p)
    for p in blocks[:-1]:
        libc.free(p)
    before = rss_mb()
    release_memory()
    print(before, rss_mb())
    """
)


@pytest.mark.skipif(_malloc_trim() is None, reason="glibc's malloc_trim is not available here")
def test_release_memory_returns_freed_heap_pages():
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True)
    before, after = map(float, out.stdout.split())
    assert before - after > 150, (before, after)  # most of the 250 MiB freed on the heap is returned


def test_io_manager_releases_once_per_step(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(iom, "release_memory", lambda: calls.append("release"))

    @dg.asset
    def a() -> pl.DataFrame:
        return pl.DataFrame({"x": [1, 2, 3]})

    @dg.asset
    def b(a: pl.DataFrame) -> pl.DataFrame:
        return a.with_columns(y=pl.col("x") * 2)

    @dg.asset
    def c(a: pl.DataFrame, b: pl.DataFrame) -> pl.DataFrame:  # two inputs, one step: one release
        return b.join(a, on="x")

    io = iom.PolarsParquetIOManager(base_path=UPath(tmp_path))
    with dg.instance_for_test() as instance:
        res = dg.materialize([a, b, c], resources={"io_manager": io}, instance=instance)
    assert res.success
    assert calls == ["release", "release"]  # b and c: each once, before its first input
