"""`python -m lens_cli ...` is `lens-eval ...`."""

import os
import sys

if sys.argv[1:2] == ["trec"]:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # no BLAS in trec: no idle BLAS threads spinning
    from lens_cli.trec import entry  # lazy: trec alone, without lens_cli.main's imports (polars; issue 19 speed)
else:
    if sys.argv[1:2] == ["score"]:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # no BLAS in score either (~50 ms of numpy's import)
    from lens_cli.main import entry  # lazy: every other command

entry()
