"""The benchmarks' peak-RSS figure is the measured command's own (issue 8).

A command started straight from a large parent reports the parent's peak as its own ru_maxrss
(Linux records the old memory map's high-water mark at exec); the last full report showed
2,499 MB for every process that way. `run_proc` launches through a small interpreter instead.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import PY, run_proc


def test_child_peak_rss_is_its_own_not_the_parents():
    ballast = np.ones(80_000_000)  # 640 MB touched in this (the parent) process
    ballast[::4096] = 2.0
    tiny = run_proc([PY, "-c", "pass"])["rss_mb"]
    assert tiny < 200, f"a bare interpreter reported {tiny:.0f} MB: the parent's {ballast.nbytes >> 20} MB leaked in"
    big = run_proc([PY, "-c", "import numpy as np; a = np.ones(40_000_000); a[::512] = 2.0; print(a.sum())"])
    assert 300 <= big["rss_mb"] < 600, big["rss_mb"]  # its 320 MB array, not the parent's 640 MB
    assert big["cpu_s"] > 0 and big["stdout"].strip()


def test_failure_and_timeout_are_reported(tmp_path):
    import pytest

    from benchmarks.common import SubprocessFailed

    with pytest.raises(SubprocessFailed, match="exited 3"):
        run_proc([PY, "-c", "import sys; print('x', file=sys.stderr); sys.exit(3)"])
    marker = tmp_path / "still-running"
    with pytest.raises(SubprocessFailed):
        run_proc([PY, "-c", f"import time; time.sleep(3); open({str(marker)!r}, 'w').write('1')"], timeout_s=0.5)
    import time

    time.sleep(3.5)
    assert not marker.exists(), "the command outlived its timeout (its process group was not killed)"
